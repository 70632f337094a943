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


@pytest.fixture
def fixed_predictions(monkeypatch):
    """Make `vist2 eval` predict given texts: answers maps a phrase of the prompt to the prediction
    (the model still generates, so the records keep real stats)."""
    import dataclasses

    import vist2.generate

    real = vist2.generate.generate

    def install(answers: dict[str, str]):
        def answering(model, tokenizer, prompts, config, **kwargs):
            results = real(model, tokenizer, prompts, config, **kwargs)
            texts = [next(a for phrase, a in answers.items() if phrase in prompt) for prompt in prompts]
            return [dataclasses.replace(result, text=text) for result, text in zip(results, texts)]

        monkeypatch.setattr(vist2.generate, "generate", answering)

    return install
