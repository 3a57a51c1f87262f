"""Batch plans: which records make up global batch b, as a pure function of (seed, b).

Two things the plain shuffle-and-batch pipeline cannot do are planned here:

* **No-duplicate batches.** With in-batch negatives, a text that occurs twice in a
  batch is a false negative for its twin. Each epoch of a dataset is a seeded
  permutation packed greedily into batches in which no text occurs twice; a record
  that would repeat a text waits for the next batch (as sentence-transformers'
  `NoDuplicatesBatchSampler` does). What cannot fill a last batch is dropped.
* **Mixtures.** Several datasets with weights; each global batch is drawn from one
  dataset (same-dataset batching: in-batch negatives of one kind, as in the
  multi-dataset training of sentence-transformers and of GTE/E5), the dataset chosen
  by a seeded draw with probability proportional to its weight. Every dataset runs
  through its own epochs independently.

Because batch b depends only on (seed, b), a grain MapDataset over batch indices
gives a pipeline whose checkpointed state is one integer, that resumes exactly, and
that is identical whatever the number of hosts or worker processes.
"""

from __future__ import annotations

import collections
import hashlib
import sys
from typing import Sequence

import grain
import numpy as np

from jaxembed.errors import DataError

_CHUNK = 4096          # mixture choices are drawn this many batches at a time
_STREAM_MIXTURE = 0x6D6978   # separate seed streams for the draws
_STREAM_EPOCH = 0x65706F


def text_keys(texts: Sequence[str]) -> frozenset[int]:
  """A record's texts as 64-bit digests (deterministic across processes, unlike hash())."""
  return frozenset(int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8)
                                  .digest(), "little") for t in texts)


def pack_epoch(order: np.ndarray, batch_size: int,
               keys: Sequence[frozenset[int]] | None) -> np.ndarray:
  """`order` (record indices) packed into full batches, [num_batches, batch_size].

  Without keys: consecutive slices. With keys: greedy, in order; a record whose texts
  meet the batch's waits (in order) for the next batches; the rest is dropped.
  """
  if keys is None:
    n = len(order) // batch_size * batch_size
    return np.asarray(order[:n], np.int64).reshape(-1, batch_size)
  batches = []
  waiting: list[int] = []
  pos, n = 0, len(order)
  while True:
    batch, seen, still_waiting = [], set(), []
    for i in waiting:
      if len(batch) < batch_size and seen.isdisjoint(keys[i]):
        batch.append(i)
        seen |= keys[i]
      else:
        still_waiting.append(i)
    while len(batch) < batch_size and pos < n:
      i = int(order[pos])
      pos += 1
      if seen.isdisjoint(keys[i]):
        batch.append(i)
        seen |= keys[i]
      else:
        still_waiting.append(i)
    if len(batch) < batch_size:
      break
    batches.append(batch)
    waiting = still_waiting
  return np.asarray(batches, np.int64).reshape(-1, batch_size)


class _DatasetEpochs:
  """The j-th batch of one dataset: epoch e is a permutation seeded by (seed, k, e)."""

  def __init__(self, size: int, batch_size: int, seed: int, index: int, keys):
    self.size, self.batch_size, self.seed, self.index = size, batch_size, seed, index
    self.keys = keys
    self._starts = [0]                        # first batch number of each epoch
    self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

  def epoch(self, e: int) -> np.ndarray:
    if e not in self._cache:
      rng = np.random.default_rng([self.seed, _STREAM_EPOCH, self.index, e])
      self._cache[e] = pack_epoch(rng.permutation(self.size), self.batch_size, self.keys)
      if len(self._cache) > 2:
        self._cache.popitem(last=False)
    return self._cache[e]

  def batch(self, j: int) -> np.ndarray:
    while self._starts[-1] <= j:
      e = len(self._starts) - 1
      count = len(self.epoch(e))
      if count == 0:
        raise DataError(f"dataset {self.index} cannot fill one batch of "
                        f"{self.batch_size} without repeating a text")
      self._starts.append(self._starts[-1] + count)
    e = int(np.searchsorted(self._starts, j, side="right")) - 1
    return self.epoch(e)[j - self._starts[e]]


class BatchPlan:
  """Global batch b -> (dataset index, its record indices), deterministic in (seed, b).

  sizes: records per dataset; weights: mixture weights (any positive scale);
  keys: per dataset, per record, the frozenset of its text digests (for no-duplicate
  batches) or None.
  """

  def __init__(self, sizes: Sequence[int], batch_size: int, seed: int,
               weights: Sequence[float] | None = None, keys=None):
    weights = np.ones(len(sizes)) if weights is None else np.asarray(weights, np.float64)
    if len(weights) != len(sizes) or np.any(weights <= 0) or not np.all(np.isfinite(weights)):
      raise DataError(f"mixture weights {list(weights)} must be positive, one per dataset")
    for k, n in enumerate(sizes):
      if n < batch_size:
        raise DataError(f"dataset {k} has {n} examples, fewer than one batch of "
                        f"{batch_size}")
    self.probs = weights / weights.sum()
    self.seed = seed
    keys = keys or [None] * len(sizes)
    self._datasets = [_DatasetEpochs(n, batch_size, seed, k, keys[k])
                      for k, n in enumerate(sizes)]
    self._chunks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self._starts = [np.zeros(len(sizes), np.int64)]

  def _draw(self, c: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, _STREAM_MIXTURE, c])
    if len(self.probs) == 1:
      return np.zeros(_CHUNK, np.int64)
    return rng.choice(len(self.probs), size=_CHUNK, p=self.probs)

  def _chunk(self, c: int):
    """(choices, per-dataset batch counts before each position) for chunk c."""
    if c not in self._chunks:
      # Batches of each dataset before chunk c: counted chunk by chunk, kept (K ints
      # per chunk) so that a resumed run at a late step does not redraw from 0 twice.
      while len(self._starts) <= c:
        n = len(self._starts) - 1
        self._starts.append(self._starts[n] + np.bincount(self._draw(n),
                                                          minlength=len(self.probs)))
      choice = self._draw(c)
      onehot = np.eye(len(self.probs), dtype=np.int64)[choice]
      self._chunks[c] = (choice, self._starts[c] + np.cumsum(onehot, axis=0) - onehot)
      if len(self._chunks) > 2:
        self._chunks.pop(next(iter(self._chunks)))
    return self._chunks[c]

  def first_batch(self, k: int) -> np.ndarray:
    """Dataset k's first batch (raises DataError if it cannot fill one)."""
    return self._datasets[k].batch(0)

  def __call__(self, b: int) -> tuple[int, np.ndarray]:
    c, r = divmod(int(b), _CHUNK)
    choice, before = self._chunk(c)
    k = int(choice[r])
    return k, self._datasets[k].batch(int(before[r, k]))


def collate(records: list[dict], num_negatives: int) -> dict:
  """Records -> columns, the layout `pipeline.TokenizePairs` reads."""
  out = {"anchor": [r["anchor"] for r in records],
         "positive": [r["positive"] for r in records]}
  if num_negatives:
    out["negatives"] = [[r["negatives"][j] for r in records] for j in range(num_negatives)]
  if records and "score" in records[0]:
    out["score"] = [r["score"] for r in records]
  return out


class PlannedBatches(grain.MapDataset):
  """This host's rows of global batch b, read from the planned dataset."""

  def __init__(self, sources: Sequence, plan: BatchPlan, global_batch: int,
               process_index: int, process_count: int, num_negatives: int = 0,
               collate_fn=None):
    super().__init__()
    self._sources = list(sources)
    self._plan = plan
    self._per_host = global_batch // process_count
    self._offset = process_index * self._per_host
    self._num_negatives = num_negatives
    self._collate = collate_fn

  def __len__(self):
    return sys.maxsize

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    k, rows = self._plan(index)
    rows = rows[self._offset:self._offset + self._per_host].tolist()
    source = self._sources[k]
    records = (source.__getitems__(rows) if hasattr(source, "__getitems__")
               else [source[i] for i in rows])
    if self._collate is not None:
      return self._collate(records, rows)
    return dict(collate(records, self._num_negatives), source=k)

  def __str__(self):
    return f"PlannedBatches(datasets={len(self._sources)})"
