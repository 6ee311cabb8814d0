"""Tests for dalle2_jax.data.tokenizer."""

import ml_collections
import numpy as np
import pytest

from dalle2_jax.data.tokenizer import ByteTokenizer, make_tokenizer


def test_layout_and_padding():
    tok = ByteTokenizer(context_length=8)
    ids = tok.encode(["ab", ""])
    assert ids.dtype == np.int32 and ids.shape == (2, 8)
    np.testing.assert_array_equal(ids[0], [1, 3 + ord("a"), 3 + ord("b"), 2, 0, 0, 0, 0])
    np.testing.assert_array_equal(ids[1], [1, 2, 0, 0, 0, 0, 0, 0])
    assert (tok.pad_id, tok.sot_id, tok.eot_id, tok.vocab_size) == (0, 1, 2, 259)


def test_round_trip():
    texts = [
        "a red circle",
        "Two blue squares, left of a green TRIANGLE!",
        "",
        "\x00\xff",
    ]
    tok = ByteTokenizer(context_length=64)
    assert tok.decode(tok.encode(texts)) == texts
    assert not tok.truncated(texts).any()


def test_unicode_bytes():
    tok = ByteTokenizer(context_length=8)
    ids = tok.encode(["é€"])[0]  # U+00E9 is C3 A9; U+20AC is E2 82 AC
    np.testing.assert_array_equal(ids[:7], [1, 3 + 0xC3, 3 + 0xA9, 3 + 0xE2, 3 + 0x82, 3 + 0xAC, 2])
    assert tok.decode([ids]) == ["é€"]


def test_truncation_keeps_eot_and_whole_characters():
    tok = ByteTokenizer(context_length=6)  # room for 4 bytes
    texts = ["abcdefgh", "abcd", "abé€", "abcé"]
    ids = tok.encode(texts)
    np.testing.assert_array_equal(tok.truncated(texts), [True, False, True, True])
    assert tok.decode(ids) == ["abcd", "abcd", "abé", "abc"]
    assert (ids[[0, 1, 2], -1] == tok.eot_id).all()
    # "abcé" is 5 bytes: the 2-byte "é" that does not fit is dropped whole, EOT follows "abc".
    np.testing.assert_array_equal(ids[3], [1, 3 + 97, 3 + 98, 3 + 99, 2, 0])


def test_decode_stops_at_eot_and_rejects_bad_ids():
    tok = ByteTokenizer(context_length=8)
    assert tok.decode([[1, 3 + 104, 3 + 105, 2, 3 + 120, 0]]) == ["hi"]
    with pytest.raises(ValueError, match="outside"):
        tok.decode([[1, 259, 2]])


def test_make_tokenizer():
    cfg = ml_collections.ConfigDict({"kind": "bytes", "context_length": 16})
    tok = make_tokenizer(cfg)
    assert isinstance(tok, ByteTokenizer) and tok.context_length == 16
    cfg.kind = "wordpiece"
    with pytest.raises(ValueError, match="tokenizer.kind"):
        make_tokenizer(cfg)
    with pytest.raises(ValueError, match="context_length"):
        ByteTokenizer(context_length=1)
