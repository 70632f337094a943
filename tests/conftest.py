"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, above all on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset with seeded random weights, and its tokenizer, on one thread."""
    from vist2.generate import load_model

    torch.set_num_threads(1)
    return load_model(preset_name="tiny", seed=0)
