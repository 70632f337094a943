"""`vist2 eval ocr`: read held-out text back from its pages, with the blank-page ablation.

Each document of --data is cut into chunks of K tokens (the model's chunk, or --chunk-tokens);
each chunk is rendered to its page and the model transcribes the page greedily, as many tokens
as the chunk has, from the page's visual tokens alone; --samples chunks per data source, spread
evenly (default 256). One row per data source:

- score: character accuracy, 100 x (1 - edit distance / reference characters), floored at 0
- rouge_l: ROUGE-L F1 over words, mean over chunks (0-100)
- bits_per_char / bits_per_char_blank_page: teacher-forced bits per character of the chunk given
  its page / a blank page (what the model knows without reading), and character_accuracy_blank_page
- ratio: K / beta, tokens per visual token (characters per visual token for the byte tokenizer;
  the measured characters per visual token are in chars_per_visual_token)

Whitespace runs become one space (pages hold no line breaks); chunks whose text fits the page at
no font size are skipped and counted (chunks_skipped).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vist2 import jsonl_files
from vist2.errors import Vist2Error
from vist2.eval.sample import Row

if TYPE_CHECKING:  # torch and the renderer load only when a run starts: `vist2 --help` stays instant
    import torch

    from vist2.render import Renderer

NAME = "ocr"
SAMPLES = 256  # --samples: chunks read per --data path
MODES = ("ocr",)  # reading a page back is its own mode; text, pcc and gcc do not apply
SUFFIXES = (".txt", ".jsonl")
MAX_FILE_BYTES = 64 << 20  # one data file; larger ones are refused, not cut
MAX_FILES = 10_000


def add_arguments(parser) -> None:
    parser.add_argument("--data", nargs="+", required=True, metavar="PATH",
                        help="held-out text: .txt files, JSONL files with a 'text' field, or folders of them "
                             "(one result row per path)")


def _files(name: str) -> list[Path]:
    path = Path(name)
    if path.is_symlink() or not path.exists():
        raise Vist2Error(f"--data: {name} does not exist or is a symbolic link")
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise Vist2Error(f"--data: {name} is not a .txt or .jsonl file")
        return [path]
    if not path.is_dir():
        raise Vist2Error(f"--data: {name} is not a regular file or folder")
    root = path.resolve()
    files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and not p.is_symlink() and p.is_file()
                   and p.resolve().is_relative_to(root))
    if not files:
        raise Vist2Error(f"--data: folder {name} holds no .txt or .jsonl files")
    if len(files) > MAX_FILES:
        raise Vist2Error(f"--data: folder {name} holds {len(files)} files, more than {MAX_FILES}")
    return files


def read_documents(name: str) -> list[str]:
    """The documents of one --data path: a .txt file is one, a JSONL line's "text" is one."""
    documents = []
    for path in _files(name):
        size = jsonl_files.regular_file(path).stat().st_size
        if size > MAX_FILE_BYTES:
            raise Vist2Error(f"--data: {path} has {size} bytes, more than the limit of {MAX_FILE_BYTES}")
        if path.suffix == ".jsonl":
            for number, record in jsonl_files.records(path):
                if not isinstance(record.get("text"), str):
                    raise Vist2Error(f"{path}, line {number}: needs a string field 'text'")
                documents.append(record["text"])
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                documents.append(handle.read(MAX_FILE_BYTES + 1))
        except (OSError, UnicodeDecodeError) as error:
            raise Vist2Error(f"--data: cannot read {path} as UTF-8 text: {error}") from None
    return documents


def held_out_chunks(tokenizer, documents: list[str], chunk_tokens: int, count: int, fill=None) -> list[list[int]]:
    """`count` full chunks of `chunk_tokens` tokens (`fill`: chunks that fill their page, a
    `chunking.Fill`) spread evenly over the documents (whitespace collapsed); chunks never
    cross a document boundary."""
    from vist2.chunking import full_chunks

    chunks = []
    for document in documents:
        chunks += full_chunks(tokenizer.encode(" ".join(document.split()), add_special_tokens=False), chunk_tokens, fill)
    if len(chunks) > count:
        chunks = [chunks[i * len(chunks) // count] for i in range(count)]
    return chunks


def _read(model, tokenizer, chunks: list[list[int]], pages: torch.Tensor) -> list[str]:
    from vist2.eval.reading import ocr_transcribe

    read = ocr_transcribe(model, pages, max(len(chunk) for chunk in chunks))
    return [tokenizer.decode(ids[: len(chunk)]) for ids, chunk in zip(read, chunks)]


def evaluate(model, tokenizer, chunks: list[list[int]], renderer: Renderer, task: str) -> tuple[Row, list[dict]]:
    """Greedy reading of each chunk's page and of a blank page, and teacher-forced bits/char of
    both: one row and one prediction record per chunk. Chunks that fit no page are skipped."""
    import torch

    from vist2.render import TextDoesNotFit
    from vist2.eval.reading import levenshtein, ocr_bits_per_char, rouge_l

    texts, kept = [], []
    for chunk in chunks:
        text = tokenizer.decode(chunk)
        try:
            renderer.render(text)
        except TextDoesNotFit:
            continue
        texts.append(text)
        kept.append(chunk)
    if not kept:
        raise Vist2Error(f"--data {task}: none of the {len(chunks)} chunks fits the model's page")
    pages = renderer.render_batch(texts)
    guesses = _read(model, tokenizer, kept, pages)
    blanks = _read(model, tokenizer, kept, torch.ones_like(pages))
    edits = [levenshtein(guess, text) for guess, text in zip(guesses, texts)]
    blank_edits = [levenshtein(guess, text) for guess, text in zip(blanks, texts)]
    characters = sum(map(len, texts))
    beta = model.config.visual_tokens
    tokens = sum(map(len, kept)) / len(kept)
    row = Row(benchmark=NAME, task=task, length=round(tokens), mode="ocr", ratio=tokens / beta,
              score=100 * max(0.0, 1 - sum(edits) / characters), n=len(kept), extra={
                  "rouge_l": 100 * sum(map(rouge_l, guesses, texts)) / len(texts),
                  "character_error_rate": sum(edits) / characters,
                  "character_accuracy_blank_page": 100 * max(0.0, 1 - sum(blank_edits) / characters),
                  "rouge_l_blank_page": 100 * sum(map(rouge_l, blanks, texts)) / len(texts),
                  "bits_per_char": ocr_bits_per_char(model, tokenizer, kept, renderer),
                  "bits_per_char_blank_page": ocr_bits_per_char(model, tokenizer, kept, renderer, blank=True),
                  "chars_per_visual_token": characters / len(kept) / beta, "visual_tokens": beta,
                  "chunks_skipped": len(chunks) - len(kept)})
    records = [{"id": f"{task}-{index}", "task": task, "mode": "ocr", "reference": text, "prediction": guess,
                "blank_page_prediction": blank, "score": 100 * max(0.0, 1 - edit / max(1, len(text)))}
               for index, (text, guess, blank, edit) in enumerate(zip(texts, guesses, blanks, edits))]
    return row, records


def check_arguments(args) -> None:
    """--samples and the --data paths, checked before the model is loaded (--chunk-tokens by its flag)."""
    if args.samples < 1:
        raise Vist2Error(f"--samples must be >= 1, got {args.samples}")
    for name in args.data:
        _files(name)


def data_files(args) -> list[Path]:
    return [path for name in args.data for path in _files(name)]


def run(args, model, tokenizer) -> tuple[list[Row], list[dict]]:
    """One row per --data path; all input is checked before any page is read."""
    check_arguments(args)
    from vist2.flags import chunk_options_from
    from vist2.render import Renderer

    renderer = Renderer(model.config.render)
    options = chunk_options_from(args, model, renderer)
    size, fill = options.chunk_tokens, options.fill(renderer, tokenizer)
    sources = {}
    for name in args.data:
        task = Path(name).stem or name
        if task in sources:
            raise Vist2Error(f"--data: two paths are both named {task!r}; rows are named after the path")
        chunks = held_out_chunks(tokenizer, read_documents(name), size, args.samples, fill)
        if not chunks:
            raise Vist2Error(f"--data: {name} holds no text of {size} tokens or more (one chunk)")
        sources[task] = chunks
    rows, records = [], []
    for task, chunks in sources.items():
        row, predictions = evaluate(model.eval(), tokenizer, chunks, renderer, task)
        rows.append(row)
        records += predictions
    return rows, records
