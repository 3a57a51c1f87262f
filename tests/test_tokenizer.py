"""A tokenizer held in memory (a workdir's, read from a bucket or a checkpointed model
folder) encodes as the one read from a file, survives pickling (grain's worker
processes), and a broken tokenizer.json is refused by name."""

import pickle

import numpy as np
import pytest

from jaxembed.data.tokenizer import Tokenizer
from jaxembed.errors import ModelLoadError
from jaxembed.models import read_model_folder
from conftest import MINILM

TEXTS = ["a short one", "a rather longer sentence with more words in it", ""]


def test_a_tokenizer_from_its_json_text_encodes_as_from_its_file():
  path = read_model_folder(MINILM).tokenizer
  from_file = Tokenizer(path, 8, "left")
  from_text = Tokenizer.from_json(open(path).read(), 8, "left", name="w/tokenizer.json")
  for tok in (from_text, pickle.loads(pickle.dumps(from_text))):
    for key, want in from_file.encode(TEXTS, pad_to=8).items():
      np.testing.assert_array_equal(tok.encode(TEXTS, pad_to=8)[key], want)
    assert (tok.max_length, tok.padding_side, tok.pad_id) == (8, "left", from_file.pad_id)


def test_a_broken_tokenizer_json_is_named():
  with pytest.raises(ModelLoadError, match=r"w/tokenizer.json: not a tokenizer.json"):
    Tokenizer.from_json('{"model": ', 8, name="w/tokenizer.json")
