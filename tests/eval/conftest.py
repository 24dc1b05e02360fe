"""Fixtures every evaluation test module shares."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions on a shared 2-core machine: one thread is ~20x faster than two
    fighting other processes for the cores (OpenMP barriers spin)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
