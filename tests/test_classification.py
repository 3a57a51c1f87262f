"""kNN, the logistic-regression probe, k-means and V-measure against scikit-learn and
slow loops; the packaged labelled sets and Fashion-MNIST builders."""

import gzip

import numpy as np
import pytest
import sklearn.cluster
import sklearn.linear_model
import sklearn.metrics

from jaxembed.data import builders, packaged, pipeline
from jaxembed.evals import classification as C
from jaxembed.evals.tasks import ClassificationTask, ClusteringTask, stratified_halves


def test_v_measure_equals_sklearn():
  rng = np.random.default_rng(0)
  for n_true, n_pred in ((2, 2), (4, 3), (5, 9), (1, 3)):
    a, b = rng.integers(0, n_true, 60), rng.integers(0, n_pred, 60)
    assert C.v_measure(a, b) == pytest.approx(sklearn.metrics.v_measure_score(a, b), abs=1e-12)
  assert C.v_measure([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0


def test_logistic_probe_equals_sklearn():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((90, 7))
  y = (x[:, 0] + 0.5 * rng.standard_normal(90) > 0).astype(int) + (x[:, 1] > 1)
  for c in (0.1, 1.0):
    w, b, classes = C.fit_logistic(x, y, c=c)
    ref = sklearn.linear_model.LogisticRegression(C=c, tol=1e-12, max_iter=10000).fit(x, y)
    np.testing.assert_allclose(w, ref.coef_.T, atol=1e-5)
    # sklearn's multinomial intercepts are defined up to a shared shift
    np.testing.assert_allclose(b - b.mean(), ref.intercept_ - ref.intercept_.mean(), atol=1e-5)
    np.testing.assert_array_equal(C.logistic_predict((w, b, classes), x), ref.predict(x))


def test_knn_against_a_loop():
  rng = np.random.default_rng(2)
  train, test = rng.standard_normal((40, 5)), rng.standard_normal((15, 5))
  labels = rng.integers(0, 3, 40)
  got = C.knn_predict(train, labels, test, k=4)
  for row, pred in zip(test, got):
    cos = [row @ t / np.linalg.norm(row) / np.linalg.norm(t) for t in train]
    order = sorted(range(40), key=lambda j: (-cos[j], j))[:4]
    votes = {}
    for j in order:
      votes[labels[j]] = votes.get(labels[j], 0) + 1
    best = max(votes.values())
    assert pred == next(labels[j] for j in order if votes[labels[j]] == best)


def test_kmeans_finds_separated_clusters_like_sklearn():
  rng = np.random.default_rng(3)
  centers = rng.standard_normal((3, 4)) * 10
  truth = rng.integers(0, 3, 120)
  x = centers[truth] + rng.standard_normal((120, 4))
  ours = C.kmeans(x, 3, seed=0)
  ref = sklearn.cluster.KMeans(3, n_init=5, random_state=0).fit_predict(x)
  assert C.v_measure(truth, ours) == 1.0 == sklearn.metrics.v_measure_score(truth, ref)


def slow_kmeans(x, k, seed=0, restarts=5, iters=100):
  """k-means written out with an [n, k, d] difference array (the form the library used
  before computing distances through a matrix product)."""
  x = np.asarray(x, np.float64)
  rng = np.random.default_rng(seed)
  best, best_inertia = None, np.inf
  for _ in range(restarts):
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, k):
      d2 = np.min(((x[:, None] - np.array(centers)[None]) ** 2).sum(-1), axis=1)
      p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1 / len(x))
      centers.append(x[rng.choice(len(x), p=p)])
    centers = np.array(centers)
    for _ in range(iters):
      assign = np.argmin(((x[:, None] - centers[None]) ** 2).sum(-1), axis=1)
      new = np.array([x[assign == j].mean(0) if np.any(assign == j) else centers[j]
                      for j in range(k)])
      if np.allclose(new, centers):
        break
      centers = new
    inertia = ((x - centers[assign]) ** 2).sum()
    if inertia < best_inertia:
      best, best_inertia = assign, inertia
  return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_equals_the_slow_loop_on_overlapping_clusters(seed):
  rng = np.random.default_rng(10 + seed)
  centers = rng.standard_normal((6, 16))
  x = centers[rng.integers(0, 6, 300)] + rng.standard_normal((300, 16))
  np.testing.assert_array_equal(C.kmeans(x, 6, seed=seed), slow_kmeans(x, 6, seed=seed))


def test_tasks_score_embeddings():
  rng = np.random.default_rng(4)
  labels = np.repeat([0, 1], 30)
  train, test = stratified_halves(labels)
  assert len(set(train) & set(test)) == 0 and np.bincount(labels[test]).tolist() == [15, 15]
  vecs = np.eye(2)[labels] * 3 + rng.standard_normal((60, 2))
  task = ClassificationTask.from_labelled("t", [str(i) for i in range(60)], labels)
  scores = task.score(vecs)
  assert scores["knn_acc"] > 0.9 and scores["probe_acc"] > 0.9
  noise = ClassificationTask.from_labelled("t", [str(i) for i in range(60)], labels).score(
      rng.standard_normal((60, 2)))
  assert noise["probe_acc"] < 0.8
  assert ClusteringTask.from_labelled("c", list("x" * 60), labels).score(vecs)["v_measure"] > 0.5


def test_packaged_sets(tfds_dir):
  texts, labels, names = packaged.load_polarity()
  assert len(texts) == 200 and names == ["neg", "pos"] and sum(labels) == 100
  assert "clichés" in " ".join(texts)          # Windows-1252 read as such
  posts, labels, names = packaged.load_newsgroup()
  assert names == ["alt.atheism", "sci.space"] and len(posts) == 200
  # Headers (which name the newsgroup, i.e. the label) are gone; one post quotes a
  # forwarded message's headers in its body, as the raw data has it.
  assert not any(p.startswith(("Newsgroups:", "From:", "Path:", "Subject:")) for p in posts)
  assert sum("Newsgroups:" in p for p in posts) <= 1
  assert len(packaged.load_wordsim()) == 353
  built = pipeline.as_numpy_records(
      builders.packaged_text("newsgroup", tfds_dir=tfds_dir).as_data_source("test"))
  assert sorted((r["text"], int(r["label"])) for r in built) == sorted(zip(posts, labels))


def test_fashion_mnist_builder(tfds_dir):
  source = builders.fashion_mnist(tfds_dir=tfds_dir).as_data_source("test")
  assert len(source) == 10_000
  # Independent read of the raw IDX labels file.
  with gzip.open(f"{packaged.FASHION_MNIST_DIR}/t10k-labels-idx1-ubyte.gz") as f:
    raw_labels = np.frombuffer(f.read()[8:], np.uint8)
  images, labels = packaged.load_fashion_mnist("test")
  np.testing.assert_array_equal(labels, raw_labels)
  assert np.bincount(labels).tolist() == [1000] * 10
  rows = source.__getitems__(list(range(0, 10_000, 97)))
  index = {img.tobytes(): lab for img, lab in zip(images, labels)}
  for r in rows:
    assert r["image"].shape == (28, 28, 1) and index[r["image"][..., 0].tobytes()] == r["label"]


def test_missing_fashion_mnist_is_named(tmp_path):
  from jaxembed.errors import DataError
  with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
    builders.fashion_mnist(tfds_dir=str(tmp_path), source_dir=str(tmp_path))


@pytest.mark.parametrize("k", [1, 3, 5, 40])
def test_nearest_neighbours_order_as_a_stable_sort_does(k):
  """The top k that kNN (and retrieval, quantised search) use, without sorting whole
  rows: the same indices, in the same order, as a stable argsort of -similarity, ties
  (many, after rounding) included."""
  from jaxembed.evals.retrieval import top_k
  sims = np.round(np.random.default_rng(k).normal(size=(60, 40)), 1)
  want = np.argsort(-sims, axis=1, kind="stable")[:, :k]
  np.testing.assert_array_equal(top_k(sims, k), want)
