"""Evaluation tasks scored from embeddings: each lists the texts it needs and scores
a matrix of (already truncated) vectors for them."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxembed.data.packaged import CAPTION_TEMPLATES
from jaxembed.evals import classification as cls_eval
from jaxembed.evals.retrieval import dense_retrieval_metrics
from jaxembed.evals.sts import cosine_rows, spearman


@dataclasses.dataclass
class STSTask:
  """Spearman between the cosine of each text pair and its human rating."""
  name: str
  texts: list[str]
  left: np.ndarray
  right: np.ndarray
  gold: np.ndarray

  @classmethod
  def from_pairs(cls, name: str, texts: list[str], pairs):
    i, j, g = zip(*pairs)
    return cls(name, list(texts), np.array(i), np.array(j), np.array(g, np.float64))

  @classmethod
  def from_word_pairs(cls, name: str, rows):
    vocab = sorted({w for a, b, _ in rows for w in (a, b)})
    index = {w: n for n, w in enumerate(vocab)}
    return cls.from_pairs(name, vocab, [(index[a], index[b], s) for a, b, s in rows])

  @classmethod
  def from_text_pairs(cls, name: str, rows):
    """rows: (text1, text2, score); each distinct text is encoded once."""
    texts = list(dict.fromkeys(t for a, b, _ in rows for t in (a, b)))
    index = {t: n for n, t in enumerate(texts)}
    return cls.from_pairs(name, texts, [(index[a], index[b], s) for a, b, s in rows])

  def score(self, vecs: np.ndarray) -> dict[str, float]:
    return {"spearman": spearman(cosine_rows(vecs[self.left], vecs[self.right]), self.gold)}


@dataclasses.dataclass
class RetrievalTask:
  """Queries retrieve from a corpus; `relevance` is the [Q, D] grade matrix."""
  name: str
  queries: list[str]
  corpus: list[str]
  relevance: np.ndarray
  k: int = 10

  @property
  def texts(self) -> list[str]:
    return self.queries + self.corpus

  @classmethod
  def from_pairs(cls, name: str, pairs: list[dict[str, str]], max_queries: int | None,
                 k: int = 10):
    """Pairs (anchor=query, positive=relevant doc); the first `max_queries` distinct
    anchors, in order, are the queries and all their positives form the corpus."""
    queries: dict[str, int] = {}
    docs: dict[str, int] = {}
    rel = []
    for p in pairs:
      if p["anchor"] not in queries:
        if max_queries is not None and len(queries) >= max_queries:
          continue
        queries[p["anchor"]] = len(queries)
      docs.setdefault(p["positive"], len(docs))
      rel.append((queries[p["anchor"]], docs[p["positive"]]))
    relevance = np.zeros((len(queries), len(docs)), np.int32)
    for q, d in rel:
      relevance[q, d] = 1
    return cls(name, list(queries), list(docs), relevance, k)

  @classmethod
  def from_qrels(cls, name: str, queries: dict[str, str], corpus: dict[str, str],
                 qrels: dict[str, dict[str, int]], k: int = 10):
    """A BEIR-style task: graded relevance from qrels, the whole corpus searched."""
    qids, dids = sorted(queries), sorted(corpus)
    col = {d: j for j, d in enumerate(dids)}
    relevance = np.zeros((len(qids), len(dids)), np.int32)
    for i, q in enumerate(qids):
      for d, rel in qrels.get(q, {}).items():
        relevance[i, col[d]] = max(rel, 0)
    return cls(name, [queries[q] for q in qids], [corpus[d] for d in dids], relevance, k)

  def with_queries(self, keep) -> "RetrievalTask":
    """The task with only the queries `keep(text)` accepts (a dev or test half), the
    corpus searched whole."""
    rows = [i for i, q in enumerate(self.queries) if keep(q)]
    if len(rows) == len(self.queries):
      return self
    return dataclasses.replace(self, queries=[self.queries[i] for i in rows],
                               relevance=self.relevance[rows])

  def score(self, vecs: np.ndarray) -> dict[str, float]:
    q = vecs[:len(self.queries)]
    d = vecs[len(self.queries):]
    m = dense_retrieval_metrics(q @ d.T, self.relevance, self.k)
    return {f"ndcg_at_{self.k}": m[f"ndcg_at_{self.k}"], f"mrr_at_{self.k}": m[f"mrr_at_{self.k}"]}


def stratified_halves(labels, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) indices: each class split in half by a seeded permutation."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  train, test = [], []
  for label in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == label))
    train.append(idx[:len(idx) // 2])
    test.append(idx[len(idx) // 2:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@dataclasses.dataclass
class ClassificationTask:
  """Accuracy of kNN (k=5, cosine) and of a logistic-regression probe (C=1), trained on
  one stratified half of the labelled texts and tested on the other."""
  name: str
  texts: list[str]
  labels: np.ndarray
  train: np.ndarray
  test: np.ndarray
  k: int = 5

  @classmethod
  def from_labelled(cls, name: str, texts, labels, seed: int = 0):
    train, test = stratified_halves(labels, seed)
    return cls(name, list(texts), np.asarray(labels), train, test)

  def score(self, vecs: np.ndarray) -> dict[str, float]:
    x, y = vecs.astype(np.float64), self.labels
    knn = cls_eval.knn_predict(x[self.train], y[self.train], x[self.test], self.k)
    probe = cls_eval.fit_logistic(x[self.train], y[self.train])
    pred = cls_eval.logistic_predict(probe, x[self.test])
    return {"knn_acc": float(np.mean(knn == y[self.test])),
            "probe_acc": float(np.mean(pred == y[self.test]))}


@dataclasses.dataclass
class ClusteringTask:
  """V-measure of k-means (k = number of classes) on the labelled texts."""
  name: str
  texts: list[str]
  labels: np.ndarray
  seed: int = 0

  @classmethod
  def from_labelled(cls, name: str, texts, labels, seed: int = 0):
    return cls(name, list(texts), np.asarray(labels), seed)

  def score(self, vecs: np.ndarray) -> dict[str, float]:
    clusters = cls_eval.kmeans(vecs, len(np.unique(self.labels)), seed=self.seed)
    return {"v_measure": cls_eval.v_measure(self.labels, clusters)}


@dataclasses.dataclass
class ZeroShotTask:
  """Zero-shot image classification (CLIP): each image takes the class whose prompts'
  mean embedding is most similar; prompts are the training caption templates."""
  name: str
  images: np.ndarray          # [n, H, W, C] float in [0, 1]
  labels: np.ndarray
  prompts: list[str]          # class-major: templates of class 0, then class 1, ...
  num_classes: int

  @classmethod
  def from_source(cls, name: str, source, class_names, limit: int):
    n = min(limit, len(source))
    rows = source.__getitems__(list(range(n)))
    images = np.stack([r["image"] for r in rows]).astype(np.float32) / 255.0
    labels = np.array([int(r["label"]) for r in rows])
    prompts = [t.format(c.lower()) for c in class_names for t in CAPTION_TEMPLATES]
    return cls(name, images, labels, prompts, len(class_names))

  def score(self, image_vecs: np.ndarray, prompt_vecs: np.ndarray) -> dict[str, float]:
    def unit(x):
      return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    classes = unit(unit(prompt_vecs).reshape(self.num_classes, -1, prompt_vecs.shape[-1])
                   .mean(1))
    pred = np.argmax(unit(image_vecs) @ classes.T, axis=1)
    return {"zero_shot_acc": float(np.mean(pred == self.labels))}
