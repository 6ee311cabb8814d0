"""Tests for dalle2_jax.data.clip_bpe: CLIP's BPE tokenizer against OpenCLIP's ids, without torch."""

import gzip
import importlib
import json
import os
import shutil
import sys

import ml_collections
import numpy as np
import pytest

from dalle2_jax.data import clip_bpe
from dalle2_jax.data.tokenizer import make_tokenizer

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "clip")
MERGES = os.path.join(FIXTURES, clip_bpe.MERGES_FILE)


@pytest.fixture(scope="module")
def corpus():
    with open(os.path.join(FIXTURES, "captions.json"), encoding="utf-8") as f:
        captions = json.load(f)
    return captions, np.load(os.path.join(FIXTURES, "tokens.npz"))


@pytest.mark.parametrize("context_length", [77, 16])
def test_ids_equal_open_clip_on_the_whole_corpus(corpus, context_length):
    captions, expected = corpus
    assert len(captions) >= 1000
    ids = clip_bpe.ClipBpeTokenizer(context_length, MERGES).encode(captions)
    reference = expected[f"ids_{context_length}"].astype(np.int32)
    differ = [captions[i] for i in np.nonzero((ids != reference).any(axis=1))[0]]
    assert not differ, f"{len(differ)} of {len(captions)} captions differ, e.g. {differ[:3]!r}"


def test_layout_truncation_and_decoding(corpus):
    tok = make_tokenizer(ml_collections.ConfigDict({"kind": "clip_bpe", "context_length": 8, "bpe_path": MERGES}))
    assert (tok.vocab_size, tok.sot_id, tok.eot_id, tok.pad_id) == (49408, 49406, 49407, 0)
    ids = tok.encode(["A  Photo of a CAT!", "", "one two three four five six seven"])
    assert ids.dtype == np.int32 and ids.shape == (3, 8)
    assert ids[0, 0] == 49406 and list(ids[1, :3]) == [49406, 49407, 0]
    assert ids[2, -1] == 49407  # cut to 6 tokens, the end token kept
    assert tok.decode(ids) == ["a photo of a cat !", "", "one two three four five six"]
    assert list(tok.truncated(["A  Photo of a CAT!", "", "one two three four five six seven"])) == [False] * 2 + [True]
    captions, _ = corpus
    full = clip_bpe.ClipBpeTokenizer(77, MERGES)
    short = [c for c in captions if not full.truncated([c])[0] and "_of_text>" not in c][:200]
    # decoding gives back the cleaned text up to spacing around punctuation (special tokens dropped)
    assert [t.replace(" ", "") for t in full.decode(full.encode(short))] == [
        clip_bpe.clean(c).replace(" ", "") for c in short]


def test_missing_merges_file_is_one_line_naming_the_field(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"^tokenizer.bpe_path='/nope.txt.gz': no such file"):
        clip_bpe.ClipBpeTokenizer(77, "/nope.txt.gz")
    monkeypatch.setattr(clip_bpe.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"tokenizer.bpe_path is empty and no installed open_clip_torch"):
        make_tokenizer(ml_collections.ConfigDict({"kind": "clip_bpe", "context_length": 77}))
    with gzip.open(tmp_path / "other.txt.gz", "wt") as f:
        f.write("#version: 0.2\nt h\nth e\n")
    with pytest.raises(ValueError, match="other.txt.gz is not CLIP's merges file"):
        clip_bpe.ClipBpeTokenizer(77, str(tmp_path / "other.txt.gz"))
    with pytest.raises(ValueError, match=r"tokenizer.bpe_path: .*captions.json is not CLIP's merges file"):
        clip_bpe.ClipBpeTokenizer(77, os.path.join(FIXTURES, "captions.json"))


def test_merges_file_is_found_in_an_installed_open_clip_package_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / "open_clip"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('importing open_clip would import torch')\n")
    shutil.copyfile(MERGES, package / clip_bpe.MERGES_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    importlib.invalidate_caches()
    assert clip_bpe.find_merges_file("") == str(package / clip_bpe.MERGES_FILE)
