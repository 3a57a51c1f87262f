"""grain input pipelines: deterministic given the seed, sharded per host, and
checkpointable (the iterator's state is saved with the model)."""

from __future__ import annotations

import grain
from jaxembed.data.builders import decode_text
from jaxembed.data.tokenizer import Tokenizer
from jaxembed.errors import DataError


class TokenizePairs:
  """Batch of records -> {'anchor': ids/mask, 'positive': ids/mask}, fixed length."""

  def __init__(self, tokenizer: Tokenizer, seq_len: int):
    self.tokenizer = tokenizer
    self.seq_len = seq_len

  def __call__(self, batch):
    out = {}
    for side in ("anchor", "positive"):
      texts = [decode_text(t) for t in batch[side]]
      out[side] = self.tokenizer.encode(texts, pad_to=self.seq_len)
    return out


def pair_dataset(source, *, tokenizer: Tokenizer, batch_size: int, seq_len: int,
                 seed: int, process_index: int = 0, process_count: int = 1,
                 max_examples: int | None = None, split_name: str = "train",
                 num_threads: int = 2) -> grain.IterDataset:
  """An endless, per-epoch reshuffled stream of tokenised pair batches for this host.

  `batch_size` is this host's share of the global batch. Each host reads a disjoint
  slice of the records (`process_index::process_count`).
  """
  ds = grain.MapDataset.source(source)
  if max_examples is not None:
    ds = ds[:max_examples]
  if len(ds) == 0:
    raise DataError(f"data split {split_name!r} is empty"
                    + (f" (data.max_train_examples={max_examples})"
                       if max_examples is not None else "")
                    + "; it needs at least one batch of examples")
  ds = ds[process_index::process_count]
  if len(ds) < batch_size:
    raise DataError(f"data split {split_name!r} has {len(ds)} examples on this host, "
                    f"fewer than one batch of {batch_size}; lower train.batch_size or "
                    "raise data.max_train_examples")
  ds = (ds.shuffle(seed=seed).repeat(None)
        .batch(batch_size, drop_remainder=True)
        .map(TokenizePairs(tokenizer, seq_len)))
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=4))


def as_numpy_records(source, limit: int | None = None,
                     chunk: int = 8192) -> list[dict[str, str]]:
  """All records (or the first `limit`) as dicts of str, read in batches (one read per
  record is ~20x slower on array_record)."""
  n = len(source) if limit is None else min(limit, len(source))
  out = []
  for start in range(0, n, chunk):
    idx = list(range(start, min(start + chunk, n)))
    rows = source.__getitems__(idx) if hasattr(source, "__getitems__") else [
        source[i] for i in idx]
    out += [{k: decode_text(v) for k, v in r.items()} for r in rows]
  return out
