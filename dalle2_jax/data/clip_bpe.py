"""CLIP's byte-level BPE tokenizer, so imported OpenAI / OpenCLIP text towers read their own ids.

CLIP (Radford et al. 2021, sec 2.4) tokenizes "with a lower-cased byte pair encoding (BPE)
representation of the text with a 49,152 vocab size" (Sennrich et al. 2016), over GPT-2's
reversible byte-to-character alphabet (Radford et al. 2019, sec 2.2), and brackets each caption
with start- and end-of-text tokens. The vocabulary is 256 byte characters, the same 256 marking a
word's end (`</w>`), one token per merge (48,894 merges) and the two special tokens: 49,408 ids,
start 49406, end 49407, padding 0 (which is also the id of "!": padding is whatever follows the
end token). Text is cleaned as CLIP does before splitting: ftfy's `fix_text`, HTML entities
unescaped twice, runs of whitespace collapsed, lower-cased.

The merges come from `bpe_simple_vocab_16e6.txt.gz`, the file CLIP and OpenCLIP ship: named by
`tokenizer.bpe_path` (a local or etils.epath path, e.g. gs://), or taken from an installed
`open_clip_torch` package (`pip install --no-deps open_clip_torch` gives the file without torch).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
from collections.abc import Sequence

import ftfy
import numpy as np
import regex
from etils import epath

MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # CLIP's BPE vocabulary (49,152) less the byte alphabet and specials
SPECIALS = ("<start_of_text>", "<end_of_text>")
# A caption splits into: a special token, an English contraction suffix, a run of letters, one
# digit, or a run of other non-space characters (CLIP's pre-tokenization).
_PIECES = regex.compile(
    "|".join(regex.escape(s) for s in SPECIALS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_END_OF_WORD = "</w>"


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map, in vocabulary order: the printable Latin-1 bytes
    stand for themselves and come first; the other 68 bytes follow, taking the characters 256,
    257, ... in byte order (so BPE never sees whitespace or control characters in a token)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def clean(text: str) -> str:
    """CLIP's text clean-up: ftfy, HTML entities (twice), whitespace runs -> one space, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def find_merges_file(bpe_path: str) -> str:
    """The merges file: `bpe_path` if given, else the one in an installed open_clip_torch package.

    Raises FileNotFoundError (one line naming `tokenizer.bpe_path`) when there is none.
    """
    if bpe_path:
        if not epath.Path(bpe_path).exists():
            raise FileNotFoundError(f"tokenizer.bpe_path={bpe_path!r}: no such file (CLIP's {MERGES_FILE})")
        return bpe_path
    spec = importlib.util.find_spec("open_clip")  # finds the package without importing it (or torch)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if os.path.isfile(os.path.join(folder, MERGES_FILE)):
            return os.path.join(folder, MERGES_FILE)
    raise FileNotFoundError(
        f"tokenizer.bpe_path is empty and no installed open_clip_torch package has {MERGES_FILE}: set "
        "tokenizer.bpe_path to that file or `pip install --no-deps open_clip_torch`")


class ClipBpeTokenizer:
    """CLIP's tokenizer behind the `Tokenizer` interface (rows `[49406, ids..., 49407, 0...]`).

    Ids equal OpenCLIP's `open_clip.tokenize` (tested on a 1,250-caption corpus); an over-long
    caption keeps its first `context_length - 2` tokens, as OpenCLIP's truncation does.
    """

    vocab_size = 49408
    pad_id, sot_id, eot_id = 0, 49406, 49407

    def __init__(self, context_length: int = 77, bpe_path: str = "") -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (SOT and EOT), got {context_length}")
        self.context_length = context_length
        path = find_merges_file(bpe_path)
        try:
            text = gzip.decompress(epath.Path(path).read_bytes()).decode("utf-8")
            lines = text.split("\n")[1 : NUM_MERGES + 1]  # the first line is a version header
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"tokenizer.bpe_path: {path} is not CLIP's merges file ({e})") from None
        merges = [tuple(line.split()) for line in lines]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"tokenizer.bpe_path: {path} is not CLIP's merges file")
        self._bytes = _byte_alphabet()
        self._unbytes = {c: b for b, c in self._bytes.items()}
        alphabet = list(self._bytes.values())
        vocab = [*alphabet, *(c + _END_OF_WORD for c in alphabet), *("".join(m) for m in merges), *SPECIALS]
        self._ids = {piece: i for i, piece in enumerate(vocab)}
        self._pieces = vocab
        self._rank = {m: i for i, m in enumerate(merges)}
        self._word_ids = functools.lru_cache(maxsize=1 << 16)(self._uncached_word_ids)

    def _merge(self, word: str) -> list[str]:
        """BPE of one pre-token (as byte characters): merge the lowest-ranked adjacent pair until
        no pair is a merge; the last character carries the end-of-word mark."""
        parts = [*word[:-1], word[-1] + _END_OF_WORD]
        while len(parts) > 1:
            pairs = [(self._rank.get(pair, NUM_MERGES), i) for i, pair in enumerate(zip(parts, parts[1:]))]
            best = min(rank for rank, _ in pairs)
            if best == NUM_MERGES:
                break
            pair = next((parts[i], parts[i + 1]) for rank, i in pairs if rank == best)
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence, left to right
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _uncached_word_ids(self, piece: str) -> tuple[int, ...]:
        if piece in SPECIALS:
            return (self._ids[piece],)
        word = "".join(self._bytes[b] for b in piece.encode("utf-8"))
        return tuple(self._ids[p] for p in self._merge(word))

    def ids(self, text: str) -> list[int]:
        """The BPE ids of a caption, without start/end tokens or truncation."""
        return [i for piece in _PIECES.findall(clean(text)) for i in self._word_ids(piece)]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """int32 [len(texts), context_length] rows `[SOT, ids..., EOT, 0...]`."""
        rows = np.full((len(texts), self.context_length), self.pad_id, np.int32)
        for row, text in zip(rows, texts):
            ids = self.ids(text)[: self.context_length - 2]
            row[: len(ids) + 2] = [self.sot_id, *ids, self.eot_id]
        return rows

    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """Cleaned texts of rows (each read up to its first EOT; start tokens dropped)."""
        texts = []
        for row in ids:
            pieces = []
            for token in (int(t) for t in row):
                if token == self.eot_id:
                    break
                if not 0 <= token < self.vocab_size:
                    raise ValueError(f"token id {token} is outside [0, {self.vocab_size})")
                if token != self.sot_id:
                    pieces.append(self._pieces[token])
            text = "".join(pieces).replace(_END_OF_WORD, self._bytes[ord(" ")])
            data = bytes(self._unbytes[c] for c in text)
            texts.append(data.decode("utf-8", errors="replace").strip())
        return texts

    def truncated(self, texts: Sequence[str]) -> np.ndarray:
        """bool [len(texts)]: True where a caption has more than context_length - 2 tokens."""
        return np.array([len(self.ids(t)) > self.context_length - 2 for t in texts], bool)
