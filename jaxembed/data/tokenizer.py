"""An offline tokenizer: Hugging Face `tokenizers` over a local tokenizer.json."""

from __future__ import annotations

import os

import numpy as np
import tokenizers

from jaxembed.errors import ModelLoadError


class Tokenizer:
  """Truncates to `max_length` tokens (specials included) and pads to a given length.

  The bundled tokenizer.json of sentence-transformers models carries its own padding and
  truncation settings; both are reset here so that shapes are chosen by the caller
  (a fixed length in training, so the step compiles once).
  """

  def __init__(self, path: str, max_length: int):
    if not os.path.isfile(path):
      raise ModelLoadError(f"tokenizer file {path} does not exist")
    self.path = path
    self.max_length = int(max_length)
    self._tok = tokenizers.Tokenizer.from_file(path)
    self._tok.no_padding()
    self._tok.enable_truncation(self.max_length)
    self.pad_id = self._tok.token_to_id("[PAD]") or 0

  def __getstate__(self):  # picklable for grain worker processes
    return {"path": self.path, "max_length": self.max_length}

  def __setstate__(self, state):
    self.__init__(state["path"], state["max_length"])

  def encode(self, texts: list[str], pad_to: int | None = None,
             pad_multiple: int = 16) -> dict[str, np.ndarray]:
    """Returns int32 `input_ids` and `attention_mask`, [len(texts), length].

    `pad_to` fixes the length; otherwise the longest text is rounded up to a multiple
    of `pad_multiple` (few distinct shapes, so few compilations at inference).
    """
    encodings = self._tok.encode_batch([str(t) for t in texts])
    longest = max((len(e.ids) for e in encodings), default=1)
    if pad_to is None:
      pad_to = min(-(-max(longest, 1) // pad_multiple) * pad_multiple, self.max_length)
    ids = np.full((len(texts), pad_to), self.pad_id, np.int32)
    mask = np.zeros((len(texts), pad_to), np.int32)
    for i, e in enumerate(encodings):
      n = min(len(e.ids), pad_to)
      ids[i, :n] = e.ids[:n]
      mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}
