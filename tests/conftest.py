import pyro
import pytest


@pytest.fixture(autouse=True)
def _clean_global_param_store():
    """Tests check that lvmkit never touches the global store, so each starts from an empty one."""
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
