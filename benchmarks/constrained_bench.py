"""Constrained decoding libraries side by side: llguidance, xgrammar, outlines-core.

For each tokenizer (the tiny preset's byte tokenizer, SmolLM2-135M's BPE) and each library:
the one-off tokenizer setup, the compile time of a JSON schema, and, walking the tokens of a
document valid for that schema, the time to fill each step's 32-bit token bitmask and to
advance the matcher by the chosen token. It also checks that every token of the document is
allowed, that a wrong first token is refused and that EOS is allowed at the end.

    PYTHONPATH=src python benchmarks/constrained_bench.py --out benchmarks/constrained.json
    PYTHONPATH=src python benchmarks/constrained_bench.py --out benchmarks/constrained_engine.json \\
        --libraries llguidance --engine tiny smollm2-135m

`--engine` also times the engine's decode per token for a free row against one constrained by
llguidance, alternated in the same process.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "height_m": {"type": "number"},
        "member": {"type": "boolean"},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city", "zip"], "additionalProperties": False},
    },
    "required": ["name", "age", "height_m", "member", "role", "tags", "address"],
    "additionalProperties": False,
}
# No free whitespace (a random model could spin in it), json.dumps' separators
COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
DOCUMENT = {"name": "Ada Lovelace", "age": 36, "height_m": 1.65, "member": True, "role": "admin",
            "tags": ["math", "engines"], "address": {"city": "London", "zip": "W1"}}


def tokenizers() -> dict:
    from vist2.presets import smollm2_folder
    from vist2.tokenizer import byte_tokenizer, load_tokenizer

    return {"bytes (tiny)": byte_tokenizer(), "smollm2-135m": load_tokenizer(str(smollm2_folder()))}


class Llguidance:
    name = module = "llguidance"

    def __init__(self, tokenizer):
        import llguidance.hf

        self.ll = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer))

    def compile(self, schema):
        grammar = self.ll.LLMatcher.grammar_from_json_schema(schema, defaults=COMPACT)
        matcher = self.ll.LLMatcher(self.tokenizer, grammar)
        assert not matcher.is_error(), matcher.get_error()
        return matcher

    def fill(self, matcher, bitmask):
        matcher.unsafe_compute_mask_ptr(bitmask.data_ptr(), bitmask.numel() * 4)

    def advance(self, matcher, token):
        assert matcher.consume_token(token), matcher.get_error()


class Xgrammar:
    name = module = "xgrammar"

    def __init__(self, tokenizer):
        import xgrammar

        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def compile(self, schema):
        compiled = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": "))
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, matcher, bitmask):
        matcher.fill_next_token_bitmask(bitmask)

    def advance(self, matcher, token):
        assert matcher.accept_token(token)


class OutlinesCore:
    name, module = "outlines-core", "outlines_core"

    def __init__(self, tokenizer):
        import outlines_core

        from vist2.tokenizer import token_bytes

        self.oc = outlines_core
        eos = tokenizer.eos_token_id
        special = set(tokenizer.all_special_ids)
        ids = [i for i in range(len(tokenizer)) if i not in special]
        vocabulary: dict[bytes, list[int]] = {}
        for index, piece in zip(ids, token_bytes(tokenizer, ids)):
            vocabulary.setdefault(piece, []).append(index)
        self.vocabulary = outlines_core.Vocabulary(eos, vocabulary)

    def compile(self, schema):
        from outlines_core.json_schema import build_regex_from_schema

        regex = build_regex_from_schema(json.dumps(schema))  # whitespace: an optional space
        return self.oc.Guide(self.oc.Index(regex, self.vocabulary))

    def fill(self, matcher, bitmask):
        matcher.write_mask_into(bitmask.data_ptr(), bitmask.numel(), 4)

    def advance(self, matcher, token):
        matcher.advance(token, return_tokens=False)


def allowed(bitmask: torch.Tensor, vocabulary: int) -> torch.Tensor:
    """(W,) int32 bitmask -> (V,) bool, as the engine unpacks it."""
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return bits.view(-1)[:vocabulary].bool()


def import_seconds(module: str) -> float:
    """Seconds to import `module` in a fresh interpreter (torch and transformers not yet loaded)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return round(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True).stdout), 3)


def measure(library, tokenizer, document: str, repeats: int) -> dict:
    vocabulary = len(tokenizer)
    ids = tokenizer.encode(document, add_special_tokens=False)
    compile_s = []
    for _ in range(repeats):
        started = time.perf_counter()
        matcher = library.compile(SCHEMA)
        compile_s.append(time.perf_counter() - started)
    try:  # response_format json_object: any JSON object, nested at any depth
        started = time.perf_counter()
        library.compile({"type": "object"})
        any_object = round(1000 * (time.perf_counter() - started), 3)
    except Exception as error:
        any_object = f"{type(error).__name__}: {error}"[:200]
    bitmask = torch.zeros((vocabulary + 31) // 32, dtype=torch.int32)
    fill_s, advance_s, unpack_s, all_allowed, first_allowed = [], [], [], True, None
    for step, token in enumerate(ids):
        started = time.perf_counter()
        library.fill(matcher, bitmask)
        filled = time.perf_counter()
        mask = allowed(bitmask, vocabulary)
        unpacked = time.perf_counter()
        fill_s.append(filled - started)
        unpack_s.append(unpacked - filled)
        if step == 0:
            first_allowed = int(mask.sum())
            wrong_first_refused = not bool(mask[tokenizer.encode("x", add_special_tokens=False)[0]])
        all_allowed &= bool(mask[token])
        started = time.perf_counter()
        library.advance(matcher, token)
        advance_s.append(time.perf_counter() - started)
    library.fill(matcher, bitmask)
    eos_at_end = bool(allowed(bitmask, vocabulary)[tokenizer.eos_token_id])
    ms = lambda values: round(1000 * statistics.median(values), 4)  # noqa: E731
    p99 = lambda values: round(1000 * sorted(values)[int(0.99 * (len(values) - 1))], 4)  # noqa: E731
    return {"compile_ms_median": ms(compile_s), "compile_ms_first": round(1000 * compile_s[0], 3),
            "compile_any_object_ms": any_object,
            "steps": len(ids), "mask_fill_ms_median": ms(fill_s), "mask_fill_ms_p99": p99(fill_s),
            "unpack_ms_median": ms(unpack_s), "advance_ms_median": ms(advance_s),
            "allowed_first_step": first_allowed, "wrong_first_token_refused": wrong_first_refused,
            "document_tokens_all_allowed": all_allowed, "eos_allowed_at_end": eos_at_end}


def engine_overhead(presets: list[str], tokens: int, repeats: int) -> list[dict]:
    """Decode seconds per token of one text-mode row, free against constrained by llguidance
    (an array of `tokens` one-digit integers: the grammar never ends the row early), alternated."""
    from vist2.constrain import json_schema_grammar
    from vist2.generate import GenerationConfig, generate, load_model

    grammar = json_schema_grammar({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                                   "minItems": tokens, "maxItems": tokens})
    rows = []
    for preset in presets:
        model, tokenizer = load_model(preset_name=preset)
        configs = {"free": GenerationConfig(mode="text", max_new_tokens=tokens, ignore_eos=True),
                   "constrained": GenerationConfig(mode="text", max_new_tokens=tokens, ignore_eos=True, grammar=grammar)}
        times = {name: [] for name in configs}
        generate(model, tokenizer, "warm up", configs["constrained"])
        for _ in range(repeats):
            for name, config in configs.items():
                result = generate(model, tokenizer, "Ten digits, please: ", config)
                times[name].append(result.stats.decode_s / (result.stats.generated_tokens - 1))
        free, constrained = (statistics.median(times[n]) for n in configs)
        rows.append({"preset": preset, "tokens": tokens, "repeats": repeats, "free_ms_per_token": round(1000 * free, 3),
                     "constrained_ms_per_token": round(1000 * constrained, 3),
                     "constrained_over_free": round(constrained / free, 3)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeats", type=int, default=5, help="compiles of the schema (median reported)")
    parser.add_argument("--libraries", nargs="+", default=["llguidance", "xgrammar", "outlines-core"])
    parser.add_argument("--engine", nargs="*", default=[], metavar="PRESET",
                        help="also time the engine's decode, free against constrained, on these presets")
    parser.add_argument("--engine-tokens", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from importlib.metadata import version

    document = json.dumps(DOCUMENT)
    results = {"document": document, "schema": SCHEMA, "python": platform.python_version(),
               "versions": {name: version(name) for name in args.libraries},
               "runs": []}
    loaded = tokenizers()
    for library_class in [c for c in (Llguidance, Xgrammar, OutlinesCore) if c.name in args.libraries]:
        import_s = import_seconds(library_class.module)
        for tokenizer_name, tokenizer in loaded.items():
            run = {"library": library_class.name, "tokenizer": tokenizer_name, "vocabulary": len(tokenizer),
                   "import_s_fresh_process": import_s}
            try:
                started = time.perf_counter()
                library = library_class(tokenizer)
                run["tokenizer_setup_s"] = round(time.perf_counter() - started, 3)
                run.update(measure(library, tokenizer, document, args.repeats))
            except Exception as error:  # a library that cannot take our tokenizer is a result too
                run["error"] = f"{type(error).__name__}: {error}"
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    results["engine"] = engine_overhead(args.engine, args.engine_tokens, 3) if args.engine else []
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
