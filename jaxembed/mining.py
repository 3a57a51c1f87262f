"""Offline hard-negative mining: encode a corpus with the current model, find each
query's top candidates with the blockwise exact search of jaxembed.evals.search, and keep negatives that rank
inside a window and score below the positive by a margin (the window skips the very top,
where unlabelled true positives hide; the margin drops near-duplicates of the positive,
as in NV-Retriever's positive-aware mining, Moreira et al. 2024).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from jaxembed.evals.search import exact_search


@dataclasses.dataclass
class MiningResult:
  records: list[dict]          # {anchor, positive, negatives: [k texts]}
  positive_scores: np.ndarray  # [n]
  negative_scores: np.ndarray  # [n, k]
  dropped: int                 # pairs with fewer than k acceptable negatives


def mine(model, pairs: list[dict], *, num_negatives: int, window=(10, 100),
         margin: float = 0.05, layer=None, dim=None, batch_size: int = 256) -> MiningResult:
  """For each (anchor, positive) pair, `num_negatives` corpus texts ranked in
  [window[0], window[1]) for the anchor whose cosine is below the positive's minus
  `margin`, and which are neither the positive nor the anchor. The corpus is the set of
  all positives. Pairs without enough such texts are dropped (counted)."""
  lo, hi = window
  if not 0 <= lo < hi or num_negatives < 1 or num_negatives > hi - lo:
    raise ValueError(f"window={window}, num_negatives={num_negatives}: need "
                     "0 <= lo < hi and 1 <= num_negatives <= hi - lo")
  corpus = list(dict.fromkeys(p["positive"] for p in pairs))
  anchors = [p["anchor"] for p in pairs]
  logging.info("mining: encoding %d anchors and %d corpus texts", len(anchors), len(corpus))
  a = model.encode(anchors, layer=layer, dim=dim, batch_size=batch_size,
                   progress="encoding anchors")
  c = model.encode(corpus, layer=layer, dim=dim, batch_size=batch_size,
                   progress="encoding corpus")
  index = {t: i for i, t in enumerate(corpus)}
  pos = np.sum(a * c[[index[p["positive"]] for p in pairs]], axis=1)
  scores, ids = exact_search(a, c, k=hi)
  records, pos_kept, neg_kept, dropped = [], [], [], 0
  for n, p in enumerate(pairs):
    chosen = []
    for rank in range(lo, hi):
      if ids[n, rank] < 0:  # fewer corpus texts than the window
        break
      text = corpus[ids[n, rank]]
      if text in (p["positive"], p["anchor"]) or scores[n, rank] > pos[n] - margin:
        continue
      chosen.append((text, float(scores[n, rank])))
      if len(chosen) == num_negatives:
        break
    if len(chosen) < num_negatives:
      dropped += 1
      continue
    records.append({"anchor": p["anchor"], "positive": p["positive"],
                    "negatives": [t for t, _ in chosen]})
    pos_kept.append(pos[n])
    neg_kept.append([s for _, s in chosen])
  return MiningResult(records, np.array(pos_kept), np.array(neg_kept), dropped)


def random_negative_scores(model, pairs, *, num_negatives: int, seed: int = 0, layer=None,
                           dim=None, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """(positive scores, scores of random other positives): the baseline gap."""
  rng = np.random.default_rng(seed)
  a = model.encode([p["anchor"] for p in pairs], layer=layer, dim=dim, batch_size=batch_size)
  d = model.encode([p["positive"] for p in pairs], layer=layer, dim=dim,
                   batch_size=batch_size)
  n = len(pairs)
  other = (np.arange(n)[:, None] + rng.integers(1, n, size=(n, num_negatives))) % n
  return np.sum(a * d, axis=1), np.einsum("nd,nkd->nk", a, d[other])


def write_jsonl(records: list[dict], path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(tmp, path)
