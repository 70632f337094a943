"""Constrained decoding with llguidance: a grammar per request, a token mask per step.

A request whose `GenerationConfig.grammar` is set (an llguidance grammar string, e.g. from
`json_schema_grammar` or `lark_grammar`) gets a `Constraint`. Before each choice the engine
masks that row's logits to the tokens the grammar allows (`mask`); each accepted token advances
the matcher; the row finishes once the grammar is complete. The matcher follows the tokens the
request outputs, never the KV cache, so text, pcc and gcc are alike: in gcc the chunks that
become pages are the same tokens the grammar already took. Why llguidance:
benchmarks/constrained.md.

    grammar = json_schema_grammar({"type": "object", "properties": {"ok": {"type": "boolean"}}})
    engine.add("Answer in JSON", GenerationConfig(mode="gcc", grammar=grammar))
"""

from __future__ import annotations

import functools
import json

import numpy as np
import torch

from vist2.errors import Vist2Error

# No free whitespace (a weak model can spin in it forever), with json.dumps' separators.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise Vist2Error("constrained decoding needs llguidance: pip install 'vist2[serve]'") from None
    return llguidance


def json_schema_grammar(schema: dict) -> str:
    """The grammar of JSON documents valid for `schema` (compact, json.dumps' separators)."""
    return _llguidance().LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)


def lark_grammar(lark: str) -> str:
    """A grammar written in llguidance's Lark dialect (it may embed %json{...} schemas)."""
    return _llguidance().LLMatcher.grammar_from_lark(lark)


@functools.lru_cache(maxsize=4)
def grammar_tokenizer(tokenizer, stop_ids: tuple[int, ...]):
    """llguidance's view of a Hugging Face tokenizer (about 1 s for a 49K vocabulary; cached).
    Any of `stop_ids` may end a complete output."""
    import llguidance.hf

    _llguidance()
    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer), eos_token=list(stop_ids))


def grammar_error(grammar: str, tokenizer, stop_ids) -> str | None:
    """Why `grammar` cannot be used (a bad schema, an unsupported keyword), or None."""
    llguidance = _llguidance()
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        grammar, grammar_tokenizer(tokenizer, tuple(sorted(stop_ids))))
    return messages[0] if is_error else None


class Constraint:
    """One request's matcher: the tokens allowed next, and the grammar advanced by each token taken."""

    def __init__(self, grammar: str, tokenizer, stop_ids) -> None:
        llguidance = _llguidance()
        self.vocabulary = len(tokenizer)
        self.matcher = llguidance.LLMatcher(grammar_tokenizer(tokenizer, tuple(sorted(stop_ids))), grammar,
                                            log_level=0)
        if self.matcher.is_error():
            raise Vist2Error(f"the grammar cannot be used: {self.matcher.get_error()}")

    def allowed(self) -> torch.Tensor:
        """(V,) bool: the tokens the grammar takes next (a stop token once it is complete)."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        return torch.from_numpy(np.unpackbits(bits, bitorder="little")[: self.vocabulary].astype(bool))

    def advance(self, token: int) -> bool:
        """Take `token`; True when the output is complete (nothing but a stop may follow) or the
        matcher failed (it never should: the token came from the mask)."""
        self.matcher.consume_token(token)
        return self.matcher.is_stopped() or self.matcher.is_error()


def mask(logits: torch.Tensor, rows) -> torch.Tensor:
    """(B, V) logits of `rows` (engine requests): each constrained row's disallowed tokens at -inf."""
    for index, request in enumerate(rows):
        if request.constraint is not None:
            allowed = request.constraint.allowed()
            if allowed.any():  # an empty mask means a failed matcher: advance() ends the row
                logits[index].masked_fill_(~allowed.to(logits.device), float("-inf"))
    return logits
