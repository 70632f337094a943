"""Tokenizers: the byte tokenizer, the offline Qwen3 tokenizer, loading, and token bytes."""

import functools

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from vist2.errors import Vist2Error
from vist2.tokenizer import (
    _token_bytes_by_prefix,
    byte_tokenizer,
    is_byte_level,
    load_tokenizer,
    qwen3_tokenizer,
    token_bytes,
)

MIXED = "Héllo, 世界! 龘靐齉 𠜎𠜱 👩‍👩‍👧‍👦 ǅ̈́ <think>ok</think>"


@functools.lru_cache(maxsize=1)
def qwen3():
    return qwen3_tokenizer()


def byte_fallback_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer (not byte-level): lowercase letters plus <0xNN> byte tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {f"<0x{byte:02X}>": byte for byte in range(256)}
    vocab.update({char: 256 + i for i, char in enumerate("▁abcdefghijklmnopqrstuvwxyz")})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_byte_tokenizer_gives_one_token_per_utf8_byte():
    tokenizer = byte_tokenizer()
    text = "Héllo 世界 😀"
    ids = tokenizer(text)["input_ids"]
    assert ids == list(text.encode())
    assert tokenizer.decode(ids) == text
    assert len(tokenizer) == 261


def test_byte_tokenizer_special_tokens():
    tokenizer = byte_tokenizer()
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]:
        assert len(tokenizer(special)["input_ids"]) == 1
    assert tokenizer.decode(tokenizer("<think>x</think>")["input_ids"], skip_special_tokens=True) == "<think>x</think>"


def test_byte_tokenizer_chat_template_is_chatml():
    prompt = byte_tokenizer().apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_byte_tokenizer_round_trips_through_save_pretrained(tmp_path):
    tokenizer = byte_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    for reloaded in [AutoTokenizer.from_pretrained(tmp_path), load_tokenizer(str(tmp_path))]:
        assert reloaded(MIXED)["input_ids"] == tokenizer(MIXED)["input_ids"]
        assert reloaded.chat_template == tokenizer.chat_template
        assert reloaded.eos_token_id == tokenizer.eos_token_id


def test_load_tokenizer_by_name_and_unknown_name():
    assert len(load_tokenizer("bytes")) == 261
    assert load_tokenizer("qwen3")("你好")["input_ids"] == qwen3()("你好")["input_ids"]
    with pytest.raises(Vist2Error, match="unknown tokenizer"):
        load_tokenizer("no-such-tokenizer")


def test_token_bytes_qwen3_joins_to_the_text_even_inside_characters():
    tokenizer = qwen3()
    ids = tokenizer(MIXED)["input_ids"]
    pieces = token_bytes(tokenizer, ids)
    assert b"".join(pieces) == MIXED.encode()
    assert is_byte_level(tokenizer)
    assert any(not _valid_utf8(piece) for piece in pieces)  # some characters span several tokens
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert token_bytes(tokenizer, [im_start]) == [b"<|im_start|>"]


def test_token_bytes_byte_tokenizer():
    tokenizer = byte_tokenizer()
    ids = tokenizer(MIXED)["input_ids"]
    assert b"".join(token_bytes(tokenizer, ids)) == MIXED.encode()


def test_generic_fallback_for_a_tokenizer_that_is_not_byte_level():
    tokenizer = byte_fallback_tokenizer()
    text = "héllo 中文 😀 x"
    ids = tokenizer(text)["input_ids"]
    assert not is_byte_level(tokenizer)
    pieces = token_bytes(tokenizer, ids)
    assert b"".join(pieces) == text.encode()
    assert "中".encode() in pieces  # a split character goes whole to the token of its first byte


def test_generic_fallback_gives_whole_characters_where_the_byte_table_splits_them():
    tokenizer = qwen3()
    text = "Hello world, 你好世界. Ω≈ç√∫"
    ids = tokenizer(text)["input_ids"]
    exact, by_prefix = token_bytes(tokenizer, ids), _token_bytes_by_prefix(tokenizer, ids)
    split = exact.index(" Ω".encode()[:2])  # Qwen3 spells " Ω" with two tokens
    assert by_prefix[split] == " Ω".encode() and by_prefix[split + 1] == b""
    assert by_prefix[:split] == exact[:split] and by_prefix[split + 2 :] == exact[split + 2 :]


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True
