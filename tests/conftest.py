"""Shared pytest configuration: deterministic seeds and the gpu marker's skip."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def dataset_name() -> str:
    """``fashion-mnist`` when it is installed (``make test`` installs it), else ``synthetic``
    (asked for by name: the code never falls back silently)."""
    from stability.paper import data

    try:
        data.load_arrays("fashion-mnist", "test", subset=1)
        return "fashion-mnist"
    except FileNotFoundError:
        return "synthetic"
