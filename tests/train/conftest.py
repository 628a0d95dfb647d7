"""Fixtures shared by the training tests."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (bit-exact resume comparisons), restoring the count afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
