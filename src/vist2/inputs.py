"""Checks of values where they enter from the command line: argparse types for numbers and
text, the torch device, output folders, and bounded reads of user-named text files."""

from __future__ import annotations

import argparse
import os

from vist2.errors import Vist2Error

MAX_TEXT_BYTES = 8 * 2**20  # largest --file / --prompt-file read


def read_text(path: str, flag: str) -> str:
    """A user-named UTF-8 file, read up to MAX_TEXT_BYTES (an endless file or device stops there)."""
    if not os.path.isfile(path):  # a FIFO or device could block or never end
        raise Vist2Error(f"{flag} {path} is not a regular file" if os.path.exists(path) else
                         f"{flag} {path} does not exist")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_TEXT_BYTES + 1)
        if len(data) > MAX_TEXT_BYTES:
            raise Vist2Error(f"{flag} {path} is larger than {MAX_TEXT_BYTES >> 20} MiB")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise Vist2Error(f"{flag}: cannot read {path}: {error}") from error


def integer(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value
    return parse


def positive_number(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def utf8_text(text: str) -> str:
    """An argparse type: text that is valid UTF-8 (argv may carry undecodable bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("is not valid UTF-8 text") from None
    return text


SEED = integer(0, 2**63 - 1)
THREADS = integer(1, 4096)


def check_device(device: str) -> None:
    """A torch device that exists on this machine, checked before any model is built."""
    import torch

    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise Vist2Error(f"--device {device!r} cannot be used here: {reason}") from None


def writable_file(path: str, flag: str, overwrite: bool = False) -> None:
    """The folder of an output file exists, and the file does not unless `overwrite` (checked before any work)."""
    from pathlib import Path

    parent = Path(path).parent
    if not parent.is_dir():
        raise Vist2Error(f"{flag} {path}: folder {parent} does not exist")
    if os.path.lexists(path) and not (overwrite and os.path.isfile(path) and not os.path.islink(path)):
        what = "is not a regular file" if os.path.lexists(path) and overwrite else "already exists"
        raise Vist2Error(f"{flag} {path} {what}; choose another path" + ("" if overwrite else " or pass --overwrite"))


def page_size(text: str) -> tuple[int, int]:
    """--page WxH as (width, height) in pixels."""
    try:
        width, height = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise Vist2Error(f"--page must look like 256x256, got {text!r}") from None
    if min(width, height) < 1:
        raise Vist2Error(f"--page sides must be >= 1 pixel, got {text!r}")
    return width, height
