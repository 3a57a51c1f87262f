"""Classification and clustering from frozen embeddings.

* kNN: cosine similarity to the training vectors, majority vote of the k nearest
  (a tied vote goes to the label of the nearest neighbour among the tied labels).
* Linear probe: multinomial logistic regression with an L2 penalty on the weights (not
  the bias), fitted exactly (L-BFGS to convergence). The objective is scikit-learn's
  `LogisticRegression(C=c)`: C * sum of log losses + ||W||^2 / 2.
* Clustering: k-means (k-means++ seeding, several restarts, best inertia) scored by
  V-measure (Rosenberg & Hirschberg, 2007), the harmonic mean of homogeneity and
  completeness.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize

from jaxembed.evals.retrieval import top_k


def unit_rows(x) -> np.ndarray:
  """Rows of x scaled to unit length, in float64 (zero rows stay zero)."""
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_predict(train_x, train_y, test_x, k: int = 5, chunk: int = 2048) -> np.ndarray:
  train_y = np.asarray(train_y)
  train_u, test_u = unit_rows(train_x), unit_rows(test_x)
  nearest = np.concatenate([top_k(test_u[s:s + chunk] @ train_u.T, k)
                            for s in range(0, len(test_u), chunk)])
  out = []
  for row in nearest:
    labels = train_y[row]
    values, counts = np.unique(labels, return_counts=True)
    tied = set(values[counts == counts.max()].tolist())
    out.append(next(label for label in labels if label in tied))  # nearest tied label
  return np.asarray(out)


def fit_logistic(x, y, c: float = 1.0, max_iter: int = 1000):
  """(W [d, classes], b [classes], classes) minimising C*sum logloss + ||W||^2/2."""
  x = np.asarray(x, np.float64)
  classes, yi = np.unique(np.asarray(y), return_inverse=True)
  n, d = x.shape
  k = len(classes)
  onehot = np.eye(k)[yi]

  def objective(theta):
    w, b = theta[:d * k].reshape(d, k), theta[d * k:]
    logits = x @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = -c * (onehot * logp).sum() + 0.5 * (w * w).sum()
    g = c * (np.exp(logp) - onehot)
    grad = np.concatenate([(x.T @ g + w).ravel(), g.sum(axis=0)])
    return loss, grad

  res = scipy.optimize.minimize(objective, np.zeros(d * k + k), jac=True,
                                method="L-BFGS-B",
                                options={"maxiter": max_iter, "gtol": 1e-8, "ftol": 1e-12})
  return res.x[:d * k].reshape(d, k), res.x[d * k:], classes


def logistic_predict(model, x) -> np.ndarray:
  w, b, classes = model
  return classes[np.argmax(np.asarray(x, np.float64) @ w + b, axis=1)]


def _sq_distances(x, sq_x, centers):
  """[n, k] squared distances, through one matrix product (not an [n, k, d] array)."""
  return np.maximum(sq_x[:, None] - 2 * x @ centers.T + (centers * centers).sum(1)[None], 0)


def kmeans(x, k: int, *, seed: int = 0, restarts: int = 5, iters: int = 100) -> np.ndarray:
  """Cluster ids; k-means++ seeding, Lloyd iterations, best of `restarts` by inertia."""
  x = np.asarray(x, np.float64)
  sq_x = (x * x).sum(1)
  rng = np.random.default_rng(seed)
  best, best_inertia = None, np.inf
  for _ in range(restarts):
    centers = [x[rng.integers(len(x))]]
    d2 = _sq_distances(x, sq_x, centers[0][None])[:, 0]
    for _ in range(1, k):
      p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1 / len(x))
      centers.append(x[rng.choice(len(x), p=p)])
      d2 = np.minimum(d2, _sq_distances(x, sq_x, centers[-1][None])[:, 0])
    centers = np.array(centers)
    for _ in range(iters):
      assign = np.argmin(_sq_distances(x, sq_x, centers), axis=1)
      counts = np.bincount(assign, minlength=k)
      sums = np.zeros_like(centers)
      np.add.at(sums, assign, x)
      new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centers)
      if np.allclose(new, centers):
        break
      centers = new
    inertia = ((x - centers[assign]) ** 2).sum()
    if inertia < best_inertia:
      best, best_inertia = assign, inertia
  return best


def _entropy(counts):
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def v_measure(labels_true, labels_pred, beta: float = 1.0) -> float:
  _, t = np.unique(np.asarray(labels_true), return_inverse=True)
  _, p = np.unique(np.asarray(labels_pred), return_inverse=True)
  table = np.zeros((t.max() + 1, p.max() + 1))
  np.add.at(table, (t, p), 1)
  n = table.sum()
  h_c, h_k = _entropy(table.sum(1)), _entropy(table.sum(0))
  nz = table > 0
  joint = table[nz] / n
  # conditional entropies H(C|K) and H(K|C)
  h_c_k = float(-(joint * np.log(table[nz] / table.sum(0, keepdims=True).repeat(
      table.shape[0], 0)[nz])).sum())
  h_k_c = float(-(joint * np.log(table[nz] / table.sum(1, keepdims=True).repeat(
      table.shape[1], 1)[nz])).sum())
  homogeneity = 1.0 if h_c == 0 else 1 - h_c_k / h_c
  completeness = 1.0 if h_k == 0 else 1 - h_k_c / h_k
  if homogeneity + completeness == 0:
    return 0.0
  return (1 + beta) * homogeneity * completeness / (beta * homogeneity + completeness)


def pca_reduce(train_x, test_x, m: int):
  """Both sets projected on the top m principal directions of train_x (centred with
  train_x's mean): a post-hoc reduction baseline for Matryoshka representations."""
  train_x = np.asarray(train_x, np.float64)
  mu = train_x.mean(0)
  _, _, vt = np.linalg.svd(train_x - mu, full_matrices=False)
  return (train_x - mu) @ vt[:m].T, (np.asarray(test_x, np.float64) - mu) @ vt[:m].T


def prefix_probes(train_z, train_y, test_z, dims, c: float = 1.0) -> dict:
  """{'linear': {dim: predictions}, '1nn': {dim: predictions}}: a linear probe
  (standardised with the training features' statistics, so the penalty sees every
  representation on one scale) and 1-NN (cosine) on the first `dim` coordinates of
  the features, each predicting a label for every test row."""
  out = {"linear": {}, "1nn": {}}
  for m in dims:
    tr, te = np.asarray(train_z)[:, :m], np.asarray(test_z)[:, :m]
    mu, sd = tr.mean(0), tr.std(0) + 1e-6
    model = fit_logistic((tr - mu) / sd, train_y, c=c)
    out["linear"][m] = logistic_predict(model, (te - mu) / sd)
    out["1nn"][m] = knn_predict(tr, train_y, te, k=1)
  return out
