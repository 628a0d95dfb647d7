import pytest


@pytest.fixture(autouse=True)
def _one_thread(tmp_path_factory, monkeypatch):
    """The data tests run many small ops; on a shared 2-core machine intra-op threads mostly wait on
    each other (2 threads measured 7x slower than 1 under load), so these tests use one. The
    synthesis cache goes to a temporary folder."""
    import torch

    monkeypatch.setenv("QFAIR_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
