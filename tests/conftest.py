import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub


@pytest.fixture(scope="session")
def tiny_sd1():
    import conjure
    from tiny_pipelines import tiny_sd

    return conjure.load_model(tiny_sd(1))


def pytest_collection_modifyitems(config, items):
    """CONJURE_TEST_ORDER=reverse runs the suite backwards: every test must pass in any order."""
    if os.environ.get("CONJURE_TEST_ORDER") == "reverse":
        items.reverse()
