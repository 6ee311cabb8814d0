"""Text tokenizers: one interface, a UTF-8 byte tokenizer and a hashed-word one that need no
vocabulary file (CLIP's own BPE, for imported CLIPs, is in `clip_bpe.py`).

Every tokenizer lays a caption out as a fixed-length row `[SOT, tokens..., EOT, PAD...]`, the
layout CLIP's text tower expects (Radford et al. 2021, sec 2.4: the text is bracketed with
start and end tokens and pooled at the end token). A caption too long for the row is truncated
so that EOT is still its last token; `truncated(texts)` tells callers which captions were cut so
they can warn.
"""

import hashlib
import re
from collections.abc import Sequence
from typing import Protocol

import ml_collections
import numpy as np

PAD_ID, SOT_ID, EOT_ID = 0, 1, 2  # shared by every tokenizer here


def _rows(token_lists: Sequence[Sequence[int]], context_length: int) -> np.ndarray:
    """Lays token lists (already short enough) out as `[SOT, tokens..., EOT, PAD...]` rows."""
    rows = np.full((len(token_lists), context_length), PAD_ID, np.int32)
    for row, tokens in zip(rows, token_lists, strict=True):
        row[0] = SOT_ID
        row[1 : 1 + len(tokens)] = tokens
        row[1 + len(tokens)] = EOT_ID
    return rows


class Tokenizer(Protocol):
    """What the pipeline, the stages and sampling need from a tokenizer."""

    vocab_size: int
    context_length: int
    pad_id: int
    sot_id: int
    eot_id: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """int32 [len(texts), context_length] rows `[SOT, tokens..., EOT, PAD...]`."""
        ...

    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """Texts of rows of ids; special tokens dropped, each row read up to its first EOT."""
        ...

    def truncated(self, texts: Sequence[str]) -> np.ndarray:
        """bool [len(texts)]: True where `encode` cuts the text to fit `context_length`."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: 0 = pad, 1 = start of text, 2 = end of text, byte b -> 3 + b.

    Truncation keeps whole characters: a multi-byte character that does not fit is dropped
    entirely, so decoding a truncated row gives a prefix of the text.
    """

    pad_id, sot_id, eot_id = PAD_ID, SOT_ID, EOT_ID
    _offset = 3
    vocab_size = _offset + 256

    def __init__(self, context_length: int) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (SOT and EOT), got {context_length}")
        self.context_length = context_length

    def _fitted_bytes(self, text: str) -> bytes:
        """The text's UTF-8 bytes, cut at a character boundary to fit between SOT and EOT."""
        data = text.encode("utf-8")
        cut = self.context_length - 2
        if len(data) <= cut:
            return data
        while cut > 0 and data[cut] & 0xC0 == 0x80:  # data[cut] continues a character
            cut -= 1
        return data[:cut]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """int32 [len(texts), context_length] rows `[SOT, bytes + 3..., EOT, PAD...]`."""
        tokens = [np.frombuffer(self._fitted_bytes(t), np.uint8).astype(np.int32) + self._offset for t in texts]
        return _rows(tokens, self.context_length)

    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """Texts of rows of ids, each read up to its first EOT; invalid UTF-8 becomes U+FFFD."""
        texts = []
        for row in ids:
            data = bytearray()
            for token in (int(t) for t in row):
                if token == self.eot_id:
                    break
                if token >= self.vocab_size or token < 0:
                    raise ValueError(f"token id {token} is outside [0, {self.vocab_size})")
                if token >= self._offset:
                    data.append(token - self._offset)
            texts.append(data.decode("utf-8", errors="replace"))
        return texts

    def truncated(self, texts: Sequence[str]) -> np.ndarray:
        """bool [len(texts)]: True where the text's bytes do not fit in context_length - 2."""
        limit = self.context_length - 2
        return np.array([len(text.encode("utf-8")) > limit for text in texts], bool)


class HashedWordTokenizer:
    """Lower-cased words (and single punctuation marks), each hashed into `vocab_size - 3` ids.

    Needs no vocabulary file, and a caption is a few tokens instead of one per byte, which makes
    the text tower several times cheaper on short captions. Two words can share an id (feature
    hashing); with the default 8192 ids the ~30 words of the shapes captions do not (a test
    checks). `decode` can only name words this instance has encoded; others read `<id>`.
    """

    pad_id, sot_id, eot_id = PAD_ID, SOT_ID, EOT_ID
    _offset = 3
    _word = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")

    def __init__(self, context_length: int, vocab_size: int) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (SOT and EOT), got {context_length}")
        if vocab_size <= self._offset:
            raise ValueError(f"tokenizer.vocab_size={vocab_size} must exceed {self._offset}")
        self.context_length = context_length
        self.vocab_size = vocab_size
        self._seen: dict[int, str] = {}

    def _ids(self, text: str) -> list[int]:
        ids = []
        for word in self._word.findall(text.lower()):
            digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
            token = self._offset + int.from_bytes(digest, "little") % (self.vocab_size - self._offset)
            self._seen.setdefault(token, word)
            ids.append(token)
        return ids

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """int32 [len(texts), context_length] rows `[SOT, word ids..., EOT, PAD...]`."""
        return _rows([self._ids(t)[: self.context_length - 2] for t in texts], self.context_length)

    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """Words of each row up to its first EOT, joined by spaces."""
        texts = []
        for row in ids:
            words = []
            for token in (int(t) for t in row):
                if token == self.eot_id:
                    break
                if token >= self._offset:
                    words.append(self._seen.get(token, f"<{token}>"))
            texts.append(" ".join(words))
        return texts

    def truncated(self, texts: Sequence[str]) -> np.ndarray:
        """bool [len(texts)]: True where a text has more than context_length - 2 words."""
        return np.array([len(self._ids(t)) > self.context_length - 2 for t in texts], bool)


def make_tokenizer(cfg: ml_collections.ConfigDict) -> Tokenizer:
    """The tokenizer a config's `tokenizer` section names.

    `kind`: "bytes" (UTF-8 bytes), "words" (hashed words, `vocab_size` ids) or "clip_bpe" (CLIP's
    BPE, merges from `bpe_path` or an installed open_clip_torch); `context_length`.
    """
    if cfg.kind == "bytes":
        return ByteTokenizer(cfg.context_length)
    if cfg.kind == "words":
        return HashedWordTokenizer(cfg.context_length, cfg.vocab_size)
    if cfg.kind == "clip_bpe":
        from dalle2_jax.data.clip_bpe import ClipBpeTokenizer

        return ClipBpeTokenizer(cfg.context_length, cfg.get("bpe_path", ""))
    raise ValueError(f"tokenizer.kind={cfg.kind!r} is unknown; known kinds: 'bytes', 'words', 'clip_bpe'")
