"""Chunking: chunks of K, the tail rule, and chunk texts that keep split characters whole."""

import functools
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vist2.chunking import chunk_texts, split_chunks, split_compressed
from vist2.errors import Vist2Error
from vist2.tokenizer import byte_tokenizer, qwen3_tokenizer, token_bytes


@functools.lru_cache(maxsize=1)
def qwen3():
    return qwen3_tokenizer()


@functools.lru_cache(maxsize=1)
def bytes_():
    return byte_tokenizer()


def test_split_chunks():
    ids = list(range(10))
    assert split_chunks(ids, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert split_chunks(ids, 5) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert split_chunks([], 4) == []


@pytest.mark.parametrize("bad", [0, -1, 2.5, None])
def test_chunk_sizes_must_be_positive_integers(bad):
    with pytest.raises(Vist2Error):
        split_chunks([1, 2], bad)
    with pytest.raises(Vist2Error):
        split_compressed([1, 2], 2, bad)


def test_tail_rule():
    ids = list(range(20))
    # 20 = 2 x 8 + 4: the residual of 4 > beta = 3 is compressed as a third chunk
    assert split_compressed(ids, 8, 3) == ([ids[:8], ids[8:16], ids[16:]], [])
    # residual of 4 <= beta = 4 stays raw
    assert split_compressed(ids, 8, 4) == ([ids[:8], ids[8:16]], ids[16:])
    assert split_compressed(ids[:16], 8, 4) == ([ids[:8], ids[8:16]], [])
    assert split_compressed(ids[:2], 8, 4) == ([], ids[:2])
    assert split_compressed([], 8, 4) == ([], [])


def test_split_character_is_rendered_once_in_the_chunk_where_it_completes_byte_tokenizer():
    tokenizer = bytes_()
    ids = tokenizer("a中b")["input_ids"]  # a, e4, b8, ad, b
    assert chunk_texts(tokenizer, split_chunks(ids, 2)) == ["a", "中", "b"]
    assert chunk_texts(tokenizer, split_chunks(ids, 3)) == ["a", "中b"]
    assert chunk_texts(tokenizer, split_chunks(ids, 4)) == ["a中", "b"]


def test_split_character_is_rendered_once_in_the_chunk_where_it_completes_qwen3():
    tokenizer = qwen3()
    text = "龘靐齉"
    ids = tokenizer(text)["input_ids"]
    pieces = token_bytes(tokenizer, ids)
    assert pieces[0] == "龘".encode()[:2]  # Qwen3 splits this character over two tokens
    texts = chunk_texts(tokenizer, [[ids[0]], ids[1:]])
    assert texts == ["", "龘靐齉"]


alphabet = st.sampled_from(list("ab xyZ.\n") + list("中文字龘靐齉") + ["😀", "\u200d", "\u0301", "é", "𠜎", "ω"])


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=alphabet, max_size=40), chunk_tokens=st.integers(1, 9), use_qwen=st.booleans())
def test_chunk_texts_join_to_the_text_without_broken_characters(text, chunk_tokens, use_qwen):
    tokenizer = qwen3() if use_qwen else bytes_()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    texts = chunk_texts(tokenizer, split_chunks(ids, chunk_tokens))
    assert "".join(texts) == tokenizer.decode(ids)  # Qwen3 normalizes to NFC; bytes keep the text as is
    assert "".join(texts) == (unicodedata.normalize("NFC", text) if use_qwen else text)
    assert not any("\ufffd" in chunk for chunk in texts)
