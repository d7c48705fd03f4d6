"""Tests import the flat modules at the repository root (data, llm, fake_server, ...) and the helpers in tests/
(hostile.py, llm_helpers.py, llama_server.py) by name. The `server` fixture is the one real llama-server of a
session, shared by test_realserver.py and test_realserver_stages.py (started only when a test asks for it)."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from llama_server import Server, free_port  # noqa: E402  (after the path is set)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = Server(free_port(), str(tmp_path_factory.mktemp("llama") / "server.log"))
    try:
        yield srv
    finally:
        srv.stop()

