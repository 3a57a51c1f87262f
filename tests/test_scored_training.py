"""Training on graded pairs (data.source='scored_file', loss.name cosent | angle): the
ranking losses per Matryoshka cell against a float64 loop, the file's grades reaching
the step beside their texts, a run end to end, and the configs that cannot work
refused with the field named."""

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed import sharding as shd, train
from jaxembed.errors import ConfigError, DataError
from jaxembed.losses.registry import BatchInputs, make_loss


def write_sts(path, rows):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["sentence1", "sentence2", "score"])
    w.writerows(rows)
  return str(path)


def graded_rows(n=48, seed=0):
  """n pairs of distinct made-up sentences with grades 0..5 (ties included)."""
  rng = np.random.default_rng(seed)
  words = ["river", "bank", "money", "stone", "light", "music", "garden", "winter",
           "engine", "paper", "window", "doctor", "market", "forest", "signal", "bridge"]
  rows = []
  for i in range(n):
    a = " ".join(rng.choice(words, size=5)) + f" number {i}"
    b = " ".join(rng.choice(words, size=6)) + f" item {i}"
    rows.append((a, b, float(rng.integers(0, 6))))
  return rows


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ranking_reference(scores, grades):
  """log(1 + sum over every (i, j) with grade_i > grade_j of exp(s_j - s_i))."""
  terms = [0.0]
  for i in range(len(scores)):
    for j in range(len(scores)):
      if grades[i] > grades[j]:
        terms.append(scores[j] - scores[i])
  terms = np.array(terms, np.float64)
  m = terms.max()
  return m + np.log(np.exp(terms - m).sum())


def cosent_reference(u, v, grades, tau):
  return ranking_reference(tau * np.sum(_unit(u) * _unit(v), -1), grades)


def angle_reference(u, v, grades, tau):
  """The angle score as complex arithmetic: halves are real and imaginary parts,
  w = u * conj(v) / (|u| |v|), score = |sum Re w + sum Im w|."""
  h = u.shape[-1] // 2
  zu, zv = u[:, :h] + 1j * u[:, h:], v[:, :h] + 1j * v[:, h:]
  w = zu * np.conj(zv) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))[:, None]
  return ranking_reference(tau * np.abs(w.real.sum(-1) + w.imag.sum(-1)), grades)


def per_cell_reference(q, d, grades, name, tau, angle_weights=(1.0, 1.0)):
  cells = [(l, m) for l in (1, 2) for m in (8, 16, 32)]     # the smoke grid
  total = 0.0
  for layer, dim in cells:
    u, v = q[:, layer - 1, :dim], d[:, layer - 1, :dim]
    value = cosent_reference(u, v, grades, tau)
    if name == "angle":
      value = angle_weights[0] * value + angle_weights[1] * angle_reference(
          u, v, grades, tau)
    total += value
  return total / len(cells)


@pytest.mark.parametrize("name", ["cosent", "angle"])
def test_ranking_losses_per_cell_match_a_float64_loop(smoke_config, name):
  config = smoke_config(**{"loss.name": name, "loss.scale": 7.0})
  config.loss.angle.update(cosine_weight=0.3, angle_weight=2.0)
  rng = np.random.default_rng(1)
  q, d = rng.normal(size=(7, 2, 32)), rng.normal(size=(7, 2, 32))
  grades = np.array([0.0, 1.0, 1.0, 4.0, 2.5, 0.0, 5.0])
  fn = make_loss(config.loss, num_layers=2, hidden=32)
  loss, aux = fn(jnp.float32(q), jnp.float32(d), inputs=BatchInputs(grades=jnp.float32(grades)))
  want = per_cell_reference(q, d, grades, name, 7.0, (0.3, 2.0))
  np.testing.assert_allclose(float(loss), want, rtol=2e-5)
  assert "loss/L1_D8" in aux and "loss/L2_D32" in aux
  # The grades decide the value: reversed grades give another loss.
  reversed_loss, _ = fn(jnp.float32(q), jnp.float32(d), inputs=BatchInputs(grades=jnp.float32(-grades)))
  assert abs(float(reversed_loss) - float(loss)) > 1e-2
  with pytest.raises(ValueError, match="no scores"):
    fn(jnp.float32(q), jnp.float32(d))
  with pytest.raises(ValueError, match="hard negatives"):
    fn(jnp.float32(q), jnp.float32(d), jnp.float32(rng.normal(size=(7, 1, 2, 32))),
       inputs=BatchInputs(grades=jnp.float32(grades)))


def test_the_files_grades_reach_the_step_with_their_texts(smoke_config, tmp_path):
  rows = graded_rows()
  path = write_sts(tmp_path / "graded.csv", rows)
  config = smoke_config(**{"data.source": "scored_file", "data.train_file": path,
                           "loss.name": "cosent", "train.dropout": False,
                           "train.batch_size": 16})
  run = train.setup(config, "/nonexistent-unused", devices=jax.devices()[:2])
  batch = next(iter(run.dataset))
  assert batch["score"].dtype == np.float32 and batch["score"].shape == (16,)
  # Each row's grade is the one its anchor text has in the file.
  enc = run.tokenizer.encode([a for a, _, _ in rows], pad_to=config.data.seq_len)
  grade_of = {tuple(ids): g for ids, (_, _, g) in zip(enc["input_ids"], rows)}
  assert len(grade_of) == len(rows)
  got = [grade_of[tuple(ids)] for ids in batch["anchor"]["input_ids"]]
  np.testing.assert_array_equal(batch["score"], got)
  assert len(set(got)) > 1

  # The step's loss is CoSENT over the cells on the model's own vectors of the batch.
  _, shardings = train.abstract_state(run)
  state = train.new_state(run, shardings)
  params = jax.tree.map(np.asarray, shd.local_value(state.params))
  q, d = run.model.apply({"params": params}, jax.tree.map(jnp.asarray, batch),
                         deterministic=True, method="encode_pairs")
  want = per_cell_reference(np.float64(q), np.float64(d), np.float64(batch["score"]),
                            "cosent", config.loss.scale)
  step_fn = train.compile_train_step(run, shardings)
  state, metrics = step_fn(state, shd.host_batch_to_global(run.mesh, batch))
  np.testing.assert_allclose(float(shd.local_value(metrics)["loss"]), want, rtol=1e-4)


def test_a_run_trains_on_graded_pairs_end_to_end(smoke_config, tmp_path):
  path = write_sts(tmp_path / "graded.csv", graded_rows(seed=3))
  config = smoke_config(**{"data.source": "scored_file", "data.train_file": path,
                           "loss.name": "angle", "train.steps": 4,
                           "train.batch_size": 16, "train.log_every": 1,
                           "train.checkpoint_every": 4, "eval.before": False,
                           "optim.warmup_steps": 1})
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result.completed and result.step == 4
  with open(tmp_path / "run" / "train_log.jsonl") as f:
    logged = [json.loads(line) for line in f]
  losses = [r["loss"] for r in logged if "loss" in r]
  assert len(losses) == 4 and all(np.isfinite(losses)) and min(losses) > 0
  with open(tmp_path / "run" / "data_fingerprint.json") as f:
    assert os.path.abspath(path) in json.load(f)


@pytest.mark.parametrize("overrides, match", [
    ({"loss.name": "cosent"}, "loss.name='cosent' ranks graded pairs: set "
                              "data.source='scored_file'"),
    ({"data.source": "scored_file", "data.train_file": "FILE"},
     "data.source='scored_file' gives graded pairs; loss.name='info_nce' would ignore"),
    ({"data.mixture": ({"source": "scored_file", "path": "FILE"},)},
     r"data.mixture\[0\]: graded pairs .* train alone"),
])
def test_configs_that_cannot_use_the_grades_are_refused(smoke_config, tmp_path, overrides,
                                                        match):
  path = write_sts(tmp_path / "graded.csv", graded_rows(n=20))
  def fill(v):
    if v == "FILE":
      return path
    if isinstance(v, tuple):
      return tuple({k: fill(x) for k, x in e.items()} for e in v)
    return v
  config = smoke_config(**{k: fill(v) for k, v in overrides.items()})
  with pytest.raises(ConfigError, match=match):
    train.setup(config, "/nonexistent-unused")


def test_a_file_whose_grades_are_all_equal_is_refused(smoke_config, tmp_path):
  path = write_sts(tmp_path / "flat.csv", [(a, b, 3.0) for a, b, _ in graded_rows(n=20)])
  config = smoke_config(**{"data.source": "scored_file", "data.train_file": path,
                           "loss.name": "cosent"})
  with pytest.raises(DataError, match="every pair has the score 3.0"):
    train.setup(config, "/nonexistent-unused")
