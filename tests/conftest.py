"""The `server` fixture: the one real llama-server of a session, shared by test_realserver.py and
test_realserver_stages.py (started only when a test asks for it). pyproject.toml puts the repository root
and tests/ on the path, so tests import the method's modules and the helpers here (hostile.py,
llm_helpers.py, llama_server.py) by name."""

import pytest
from llama_server import Server, free_port


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = Server(free_port(), str(tmp_path_factory.mktemp("llama") / "server.log"))
    try:
        yield srv
    finally:
        srv.stop()
