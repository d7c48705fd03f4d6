"""The `server` fixture: the one real llama-server of a session, shared by real/test_realserver.py and
real/test_realserver_stages.py (started only when a test asks for it). pyproject.toml puts the repository
root, tests/, tests/method/ and tests/labelling/ on the path, so tests import the method's modules, the
helpers here (hostile.py, llm_helpers.py, llama_server.py) and the test modules others reuse by name."""

import pytest
from llama_server import Server, free_port


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = Server(free_port(), str(tmp_path_factory.mktemp("llama") / "server.log"))
    try:
        yield srv
    finally:
        srv.stop()
