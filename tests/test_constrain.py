"""Constrained decoding: the per-row mask equals llguidance's own token check; a schema is
followed in text, pcc and gcc (greedy and sampled, across gcc chunk compressions) and the row
ends when the JSON is complete; a constrained row beside free rows leaves them as they were."""

import json

import pytest

from conftest import require_extra  # noqa: E402

llguidance = require_extra("llguidance")

from vist2.constrain import Constraint, json_schema_grammar  # noqa: E402
from vist2.engine import Engine  # noqa: E402
from vist2.errors import Vist2Error  # noqa: E402
from vist2.generate import GenerationConfig, generate  # noqa: E402
from vist2.options import chunk_options  # noqa: E402
from vist2.request import stop_ids  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "ok": {"type": "boolean"},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
    },
    "required": ["name", "age", "ok", "role", "tags"],
    "additionalProperties": False,
}


def valid(document: dict) -> bool:
    """SCHEMA checked by hand (jsonschema is not a dependency of the engine)."""
    return (set(document) == set(SCHEMA["properties"]) and isinstance(document["name"], str)
            and len(document["name"]) <= 12 and type(document["age"]) is int and 0 <= document["age"] <= 120
            and type(document["ok"]) is bool and document["role"] in ("admin", "user")
            and len(document["tags"]) <= 3 and all(isinstance(t, str) and len(t) <= 5 for t in document["tags"]))


def test_mask_equals_the_matchers_own_check(tiny):
    _, tokenizer = tiny
    constraint = Constraint(json_schema_grammar(SCHEMA), tokenizer, stop_ids(tokenizer))
    document = '{"name": "Ada", "age": 36, "ok": true, "role": "user", "tags": ["x"]}'
    for step, token in enumerate(tokenizer.encode(document, add_special_tokens=False)):
        allowed = constraint.allowed()
        expected = [t for t in range(len(tokenizer)) if constraint.matcher.validate_tokens([t]) == 1]
        assert allowed.nonzero().flatten().tolist() == expected, step
        assert not constraint.advance(token) or step == len(document) - 1
    assert constraint.matcher.is_stopped()  # the closing brace completed the grammar


@pytest.mark.parametrize("mode", ["text", "pcc", "gcc"])
def test_each_mode_follows_the_schema_and_stops_when_complete(tiny, mode):
    model, tokenizer = tiny
    options = chunk_options(model, chunk_tokens=16)  # gcc compresses chunks in mid-document
    grammar = json_schema_grammar(SCHEMA)
    for sampled in (dict(temperature=0.0), dict(temperature=1.0, seed=3)):
        config = GenerationConfig(mode=mode, max_new_tokens=300, ignore_eos=True, grammar=grammar, **sampled)
        result = generate(model, tokenizer, "Describe a user as JSON. " * 3, config, options=options)
        assert valid(json.loads(result.text)), result.text
        assert len(result.token_ids) < 300  # ended by the grammar, though EOS is ignored
        if mode == "gcc":
            assert result.stats.chunks_compressed >= 2


def test_a_constrained_row_leaves_free_rows_as_they_were(tiny):
    model, tokenizer = tiny
    options = chunk_options(model, chunk_tokens=16)
    jobs = [("Hello there. " * 4, GenerationConfig(mode="gcc", max_new_tokens=40, ignore_eos=True)),
            ("JSON please. " * 4,
             GenerationConfig(mode="gcc", max_new_tokens=200, grammar=json_schema_grammar(SCHEMA))),
            ("Free text. " * 4, GenerationConfig(mode="text", max_new_tokens=40, temperature=1.0, seed=5))]
    engine = Engine(model, tokenizer, options=options)
    requests = [engine.add(prompt, config) for prompt, config in jobs]
    for _ in engine.run():
        pass
    for request, (prompt, config) in zip(requests, jobs):
        alone = generate(model, tokenizer, prompt, config, options=options)
        assert request.result(tokenizer).token_ids == alone.token_ids, config.mode
    assert valid(json.loads(requests[1].result(tokenizer).text))


def test_an_unusable_grammar_is_refused_when_added(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer)
    bad = json_schema_grammar({"type": "object", "properties": {"x": {"type": "no-such-type"}}})
    with pytest.raises(Vist2Error, match="grammar cannot be used"):
        engine.add("hi", GenerationConfig(mode="text", grammar=bad))
    assert not engine.waiting


def test_a_grammar_with_the_ngram_ban_is_refused():
    with pytest.raises(Vist2Error, match="no_repeat_ngram_size"):
        GenerationConfig(grammar=json_schema_grammar({"type": "object"}), no_repeat_ngram_size=2)
