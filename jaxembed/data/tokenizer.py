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

  def __init__(self, path: str, max_length: int, padding_side: str = "right"):
    if not os.path.isfile(path):
      raise ModelLoadError(f"tokenizer file {path} does not exist")
    try:
      tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:   # the tokenizers library raises a bare Exception
      raise ModelLoadError(f"{path}: not a tokenizer.json ({str(e)[:200]})") from e
    self._setup(tok, max_length, padding_side)
    self.path, self._json = path, None

  @classmethod
  def from_json(cls, text: str, max_length: int, padding_side: str = "right",
                name: str = "tokenizer.json") -> "Tokenizer":
    """The tokenizer a tokenizer.json's text describes, held in memory (no file to
    keep or clean up). `name` names it in errors."""
    try:
      tok = tokenizers.Tokenizer.from_str(text)
    except Exception as e:   # the tokenizers library raises a bare Exception
      raise ModelLoadError(f"{name}: not a tokenizer.json ({e})") from e
    self = cls.__new__(cls)
    self._setup(tok, max_length, padding_side)
    self.path, self._json = name, text
    return self

  def to_json(self) -> str:
    """The text of the tokenizer.json it was made from."""
    if self._json is not None:
      return self._json
    with open(self.path) as f:
      return f.read()

  def _setup(self, tok, max_length: int, padding_side: str) -> None:
    if padding_side not in ("right", "left"):
      raise ModelLoadError(f"padding_side={padding_side!r}; valid: ['right', 'left']")
    self.padding_side = padding_side
    self.max_length = int(max_length)
    self._tok = tok
    # The pad token: the one its own padding settings name (MPNet's '<pad>' is id 1),
    # else '[PAD]' or '<pad>' when the vocabulary has one, else id 0.
    padding = tok.padding
    named = [tok.token_to_id(t) for t in ("[PAD]", "<pad>")]
    self.pad_id = (padding["pad_id"] if padding else
                   next((i for i in named if i is not None), 0))
    self._tok.no_padding()
    self._tok.enable_truncation(self.max_length)
    self.pad_token = self._tok.id_to_token(self.pad_id)

  def __getstate__(self):  # picklable for grain worker processes
    return {"path": self.path, "json": self._json, "max_length": self.max_length,
            "padding_side": self.padding_side}

  def __setstate__(self, state):
    args = (state["max_length"], state.get("padding_side", "right"))
    if state.get("json") is not None:
      self.__dict__.update(Tokenizer.from_json(state["json"], *args, state["path"]).__dict__)
    else:
      self.__init__(state["path"], *args)

  def lengths(self, texts: list[str], instruction: str = "",
              chunk: int = 8192) -> np.ndarray:
    """Each text's token count as `encode` would give it (specials included, truncated
    to `max_length`), tokenized `chunk` texts at a time so nothing large is held."""
    out = np.zeros(len(texts), np.int64)
    for start in range(0, len(texts), chunk):
      encodings = self._tokenize(texts[start:start + chunk], instruction)
      out[start:start + len(encodings)] = [len(e.ids) for e in encodings]
    return out

  def _prompt_length(self, instruction: str) -> int:
    """sentence-transformers' prompt length: the tokens of the instruction encoded
    alone, less a trailing special token ([SEP], EOS)."""
    alone = self._tok.encode(instruction)
    return len(alone.ids) - int(bool(alone.special_tokens_mask
                                     and alone.special_tokens_mask[-1]))

  def _tokenize(self, texts, instruction: str):
    """Each text with the instruction before it, tokenized and truncated, unpadded."""
    return self._tok.encode_batch([instruction + str(t) for t in texts])

  def encode(self, texts: list[str], pad_to: int | None = None,
             pad_multiple: int = 8, instruction: str = "") -> dict[str, np.ndarray]:
    """Returns int32 `input_ids` and `attention_mask`, [len(texts), length], padded on
    `padding_side`.

    `pad_to` fixes the length; otherwise the longest text is rounded up to a multiple
    of `pad_multiple` (few distinct shapes, so few compilations at inference, and
    little padding beyond the batch's longest: benchmarks/README.md).
    With an `instruction`, each text is encoded as instruction + text and a
    `pool_mask` is added: the attention mask without the instruction's prefix, which
    takes part in attention but not in pooling. The prefix is counted as
    sentence-transformers counts it for `include_prompt: false` (the instruction
    tokenized alone, special tokens before it included, a trailing special token
    not), so an exported model with its prompt gives the same vectors there. For a
    SentencePiece tokenizer and an instruction ending in a space, that count includes
    the space's own token, which the joined text does not have, so the prefix reaches
    one token into the text: sentence-transformers does the same, and training here
    pools as the exported model will.
    """
    encodings = self._tokenize(texts, instruction)
    longest = max((len(e.ids) for e in encodings), default=1)
    if pad_to is None:
      pad_to = min(-(-max(longest, 1) // pad_multiple) * pad_multiple, self.max_length)
    ids = np.full((len(texts), pad_to), self.pad_id, np.int32)
    mask = np.zeros((len(texts), pad_to), np.int32)
    pool = np.zeros((len(texts), pad_to), np.int32) if instruction else None
    prefix = self._prompt_length(instruction) if instruction else 0
    for i, e in enumerate(encodings):
      n = min(len(e.ids), pad_to)
      cols = slice(0, n) if self.padding_side == "right" else slice(pad_to - n, pad_to)
      ids[i, cols] = e.ids[:n]
      mask[i, cols] = 1
      if pool is not None:
        keep = np.ones(n, np.int32)
        keep[:prefix] = 0
        pool[i, cols] = keep
    out = {"input_ids": ids, "attention_mask": mask}
    if pool is not None:
      out["pool_mask"] = pool
    return out


