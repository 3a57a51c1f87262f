"""Sequence packing: a batch's texts laid end to end in a few fixed-length rows.

A training batch of short texts padded to `data.seq_len` is mostly padding (the
default job's WordNet and FOLDOC pairs: 25 real tokens a pair in 64 slots), and an
encoder spends its time on every slot. Packed, the texts share rows of `row_length`
tokens; each token attends only to its own text (a block-diagonal mask from the
segment ids) and keeps its own position, so every text's hidden states are those of
the padded layout, and pooling reads them back through a gather (`token_index`).

The row count is rounded up to a multiple of `granule` so that only a few shapes
(each one compilation) occur in a run. Packing is first-fit over the texts in
decreasing length, a deterministic function of the batch, so a resumed run packs
exactly as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np


def pack_rows(masks: list[np.ndarray], ids: list[np.ndarray], row_length: int,
              granule: int = 8) -> tuple[dict, list[np.ndarray]]:
  """Packs the texts of `ids` (arrays [n_i, seq_len]; real tokens where `masks` is 1)
  into rows of `row_length` tokens.

  Returns ({'input_ids', 'segment_ids', 'position_ids'}: int32 [rows, row_length],
  one `token_index` int32 array per input, shaped like it). segment_ids: 0 on padding,
  k > 0 for the k-th text of a row; position_ids: each token's column in its padded
  row (so right or left padding gives the positions the padded layout gives);
  token_index[i][t, j]: the flat index (row * row_length + column) of token j of text t
  in the packed rows, 0 where masks[i][t, j] is 0.
  """
  if granule < 1:
    raise ValueError(f"granule={granule} must be >= 1")
  columns = []                      # per text: the padded layout's columns of its tokens
  for mask in masks:
    columns += [np.flatnonzero(row) for row in np.asarray(mask)]
  too_long = [len(c) for c in columns if len(c) > row_length]
  if too_long:
    raise ValueError(f"a text of {max(too_long)} tokens does not fit rows of "
                     f"{row_length}; row_length must be at least the sequence length")
  order = sorted(range(len(columns)), key=lambda t: (-len(columns[t]), t))
  free: list[int] = []              # tokens left in each row
  count: list[int] = []             # texts in each row
  place = [(0, 0, 0)] * len(columns)   # text -> (row, start, segment)
  for t in order:
    n = len(columns[t])
    row = next((r for r, left in enumerate(free) if left >= n), None)
    if row is None:
      row = len(free)
      free.append(row_length)
      count.append(0)
    count[row] += 1
    place[t] = (row, row_length - free[row], count[row])
    free[row] -= n
  rows = max(granule, -(-len(free) // granule) * granule)
  packed = {k: np.zeros((rows, row_length), np.int32)
            for k in ("input_ids", "segment_ids", "position_ids")}
  index, t = [], 0
  for mask, tokens in zip(masks, ids):
    tokens = np.asarray(tokens)
    out = np.zeros(tokens.shape, np.int32)
    for k in range(tokens.shape[0]):
      row, start, segment = place[t]
      cols = columns[t]
      span = slice(start, start + len(cols))
      packed["input_ids"][row, span] = tokens[k, cols]
      packed["segment_ids"][row, span] = segment
      packed["position_ids"][row, span] = cols
      out[k, cols] = row * row_length + np.arange(start, start + len(cols))
      t += 1
    index.append(out)
  return packed, index
