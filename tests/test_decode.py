"""The generation forwards hand the KV store to the model by the keyword its transformers takes."""

import warnings

from vist2.generate import GenerationConfig, generate


def test_generation_passes_the_cache_without_deprecated_keywords(tiny):
    """transformers 5.25 renamed `past_key_values=` to `cache=` (the old name warns and goes in
    5.40); 5.23 knows only the old one. Either way no warning, and the store is the one used:
    text mode equal to Hugging Face greedy is `test_generate.test_text_mode_equals_hugging_face_greedy`."""
    model, tokenizer = tiny
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for mode in ("text", "gcc"):
            result = generate(model, tokenizer, "the of and " * 30,
                              GenerationConfig(mode=mode, max_new_tokens=70, ignore_eos=True))
            assert result.stats.generated_tokens == 70
    assert not [str(w.message) for w in caught if "past_key_values" in str(w.message)]
