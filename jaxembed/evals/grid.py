"""Quality of every (layer, dim) sub-model from one encoding of each text."""

from __future__ import annotations

import io
import logging
import re
from typing import Sequence

import numpy as np

from jaxembed.evals.tasks import RetrievalTask, STSTask


def evaluate_grid(encode_all_layers, tasks: Sequence[STSTask | RetrievalTask],
                  layers: Sequence[int], dims: Sequence[int],
                  encode_queries=None) -> list[dict]:
  """`encode_all_layers(texts) -> [n, num_layers, hidden]` is called once; each cell
  truncates to its dim and renormalises. Returns one row per cell:
  {'layer', 'dim', '<task>/<metric>': value, ...}.

  `encode_queries` (optional, same signature) encodes the queries of retrieval tasks,
  e.g. with a query instruction."""
  query_tasks = [t for t in tasks if isinstance(t, RetrievalTask)] if encode_queries else []
  with_queries = {id(t) for t in query_tasks}   # (dataclass == compares arrays)
  texts = list(dict.fromkeys(
      t for task in tasks
      for t in (task.corpus if id(task) in with_queries else task.texts)))
  index = {t: i for i, t in enumerate(texts)}
  logging.info("evaluating %d (layer, dim) cells on %d texts", len(layers) * len(dims),
               len(texts))
  vecs = encode_all_layers(texts)
  if query_tasks:
    queries = list(dict.fromkeys(q for task in query_tasks for q in task.queries))
    q_index = {t: i + len(texts) for i, t in enumerate(queries)}
    vecs = np.concatenate([vecs, encode_queries(queries)])
  rows = []
  for layer in layers:
    for dim in dims:
      v = vecs[:, layer - 1, :dim].astype(np.float64)
      v /= np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
      row = {"layer": int(layer), "dim": int(dim)}
      for task in tasks:
        if id(task) in with_queries:
          rows_idx = [q_index[t] for t in task.queries] + [index[t] for t in task.corpus]
        else:
          rows_idx = [index[t] for t in task.texts]
        sub = v[rows_idx]
        row.update({f"{task.name}/{k}": val for k, val in task.score(sub).items()})
      rows.append(row)
  return rows


def metric_names(rows: list[dict]) -> list[str]:
  return [k for k in rows[0] if k not in ("layer", "dim")]


def grid_array(rows: list[dict], metric: str):
  layers = sorted({r["layer"] for r in rows})
  dims = sorted({r["dim"] for r in rows})
  a = np.full((len(layers), len(dims)), np.nan)
  for r in rows:
    a[layers.index(r["layer"]), dims.index(r["dim"])] = r[metric]
  return layers, dims, a


def format_table(before: list[dict] | None, after: list[dict]) -> str:
  """One block per metric: rows are layers, columns dims; 'after (+delta)' if both."""
  lines = []
  for metric in metric_names(after):
    layers, dims, a = grid_array(after, metric)
    b = grid_array(before, metric)[2] if before else None
    lines.append(f"{metric} (x100)" + (" after training (change from before)" if b is not None else ""))
    lines.append("layer\\dim " + "".join(f"{d:>14d}" for d in dims))
    for i, layer in enumerate(layers):
      cells = []
      for j in range(len(dims)):
        cell = f"{100 * a[i, j]:.1f}"
        if b is not None:
          cell += f" ({100 * (a[i, j] - b[i, j]):+.1f})"
        cells.append(f"{cell:>14s}")
      lines.append(f"{layer:>9d} " + "".join(cells))
    lines.append("")
  return "\n".join(lines)


def text_color(rgba) -> str:
  """Black or white, whichever contrasts more with a cell of colour `rgba` (WCAG
  relative luminance: black on cells lighter than 0.179)."""
  def linear(c):
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
  r, g, b = (linear(float(c)) for c in rgba[:3])
  return "k" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "w"


def heatmap_file_name(metric: str) -> str:
  """'wordnet/ndcg_at_10' -> 'wordnet_ndcg_at_10.png'."""
  return re.sub(r"[^A-Za-z0-9_.\-]", "_", metric) + ".png"


def heatmaps(before: list[dict] | None, after: list[dict]) -> dict[str, tuple[bytes, np.ndarray]]:
  """One figure per metric: the grid after training and (with `before`) its change, in
  points, each cell's value written in black or white by the cell's colour. Returns
  {metric: (PNG bytes, RGB array [H, W, 3] uint8)}."""
  import matplotlib  # optional dependency
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  out = {}
  for metric in metric_names(after):
    layers, dims, a = grid_array(after, metric)
    a = 100 * a  # shown, like the printed table, in points
    panels = [("after (x100)", a, "viridis")]
    if before:
      panels.append(("after - before (points)", a - 100 * grid_array(before, metric)[2],
                     "RdBu"))
    width = max(3.0, 0.62 * len(dims) + 1.6)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels),
                                                      max(2.6, 0.42 * len(layers) + 1.4)),
                             squeeze=False)
    for c, (title, values, cmap) in enumerate(panels):
      ax = axes[0, c]
      finite = values[np.isfinite(values)]
      lim = float(np.abs(finite).max()) if cmap == "RdBu" and finite.size else None
      im = ax.imshow(values, cmap=cmap, vmin=-lim if lim else None, vmax=lim or None,
                     aspect="auto", origin="lower")
      ax.set_xticks(range(len(dims)), [str(d) for d in dims])
      ax.set_yticks(range(len(layers)), [str(l) for l in layers])
      ax.set_xlabel("dim")
      ax.set_ylabel("layer")
      ax.set_title(f"{metric}: {title}", fontsize=9)
      for i in range(len(layers)):
        for j in range(len(dims)):
          if np.isfinite(values[i, j]):
            ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=8,
                    color=text_color(im.cmap(im.norm(values[i, j]))))
      fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    out[metric] = (buf.getvalue(), rgb)
  return out
