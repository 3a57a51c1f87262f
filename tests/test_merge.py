"""Model merging (jaxembed.train.merge, experiments.merge): the merged weights are
θ0 + Σ α_i τ_i computed in NumPy from the restored checkpoints; Self Positioning's
gradient in α matches central finite differences of the probe loss; task
arithmetic's λ is the grid's lowest probe loss; the written folder loads with
`jaxembed.load` and encodes like the NumPy merge; bad inputs are refused by name."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxembed
from jaxembed import train
from jaxembed.api import EmbeddingModel
from jaxembed.errors import ConfigError
from jaxembed.train import merge as mg

from conftest import REPO, user_env

TEXTS = ["a small dog", "the river bank", "to run quickly"]


@pytest.fixture(scope="module")
def specialists(smoke_config, tmp_path_factory):
  """Two runs from one start: a smoke run after 4 steps, and the same run as of step 2
  (a copy of its workdir without the last checkpoint); one training for both."""
  root = tmp_path_factory.mktemp("merge")
  config = smoke_config(**{"train.steps": 4, "eval.before": False,
                           "train.checkpoint_every": 2, "train.keep_checkpoints": 2,
                           "optim.learning_rate": 3e-3, "eval.wordnet_queries": 0})
  late, early = str(root / "late"), str(root / "early")
  train.train_and_evaluate(config, late)
  shutil.copytree(late, early)
  shutil.rmtree(f"{early}/checkpoints/4")
  return [late, early]


def _host(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float64), tree)


def test_merged_weights_are_the_pretrained_plus_weighted_task_vectors(specialists):
  run = mg.workdir_run(specialists[0], others=specialists[1:])
  base = mg.load_params(run, "pretrained")
  tuned = [mg.load_params(run, w) for w in specialists]
  b, t0, t1 = _host(base), _host(tuned[0]), _host(tuned[1])
  taus = mg.task_vectors(base, tuned)
  for alphas in ([0.5, 0.5], [0.8, 0.8], [1.3, -0.2]):
    got = _host(mg.combine(base, taus, alphas))
    want = jax.tree.map(lambda p, x, y: p + alphas[0] * (x - p) + alphas[1] * (y - p),
                        b, t0, t1)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6),
                 got, want)
  # The uniform merge is the plain average of the runs, and the runs did move apart.
  avg = jax.tree.map(lambda x, y: (x + y) / 2, t0, t1)
  got = _host(mg.combine(base, taus, [0.5, 0.5]))
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6),
               got, avg)
  apart = max(jax.tree.leaves(jax.tree.map(lambda x, y: np.abs(x - y).max(), t0, t1)))
  assert apart > 1e-4


def test_self_positioning_follows_the_probe_loss_gradient(specialists):
  run = mg.workdir_run(specialists[0], others=specialists[1:])
  base = mg.load_params(run, "pretrained")
  taus = mg.task_vectors(base, [mg.load_params(run, w) for w in specialists])
  probe = mg.interleave([mg.probe_batches(mg.workdir_run(w, seed_offset=1000), 1)
                         for w in specialists])
  assert len(probe) == 2
  # The first Adam step moves each α by -lr * sign(gradient) (Adam's first update is
  # the sign for a nonzero gradient); the gradient's sign comes from finite
  # differences of the loss on the first probe batch.
  lr, eps = 1e-3, 2e-2
  alphas, history = mg.self_positioning(run, base, taus, probe, steps=1, learning_rate=lr)
  for i in range(2):
    up, down = [0.5, 0.5], [0.5, 0.5]
    up[i] += eps
    down[i] -= eps
    hi, lo = mg.probe_losses(run, base, taus, [up, down], probe[:1])
    slope = (hi - lo) / (2 * eps)
    assert abs(slope) > 1e-4, slope
    np.testing.assert_allclose(alphas[i], 0.5 - lr * np.sign(slope), atol=1e-6)
  assert history[0][0] == 1 and len(history[0][1]) == 2
  # More steps lower the probe loss below the uniform merge's.
  found, _ = mg.self_positioning(run, base, taus, probe, steps=15, learning_rate=0.05)
  uniform, merged = mg.probe_losses(run, base, taus, [[0.5, 0.5], found.tolist()], probe)
  assert merged < uniform


def test_task_arithmetic_takes_the_scale_with_the_lowest_probe_loss(specialists):
  run = mg.workdir_run(specialists[0], others=specialists[1:])
  base = mg.load_params(run, "pretrained")
  taus = mg.task_vectors(base, [mg.load_params(run, w) for w in specialists])
  probe = mg.probe_batches(mg.workdir_run(specialists[0], seed_offset=1000), 2)
  scales = (0.0, 0.5, 1.0, 2.0)
  lam, table = mg.choose_scale(run, base, taus, probe, scales)
  again = mg.probe_losses(run, base, taus, [[s, s] for s in scales], probe)
  np.testing.assert_allclose([table[s] for s in scales], again, rtol=1e-6)
  assert table[lam] == min(again)


def test_the_merge_command_writes_a_folder_jaxembed_loads(specialists, tmp_path):
  out = tmp_path / "merged"
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  ran = subprocess.run(
      [sys.executable, "-m", "experiments.merge", f"--workdirs={','.join(specialists)}",
       "--method=task_arithmetic", "--scale=0.75", f"--out={out}"],
      cwd=REPO, env=dict(user_env(), TMPDIR=str(scratch)), capture_output=True, text=True,
      timeout=300)
  assert ran.returncode == 0, ran.stderr[-3000:]
  assert not list(scratch.glob("jaxembed-merge-*"))   # its scratch workdirs are gone
  record = json.loads((out / "merge.json").read_text())
  assert record["alphas"] == [0.75, 0.75] and record["method"] == "task_arithmetic"
  # The same merge in NumPy, in a model laid out like the first run's.
  like = jaxembed.load(specialists[0])
  run = mg.workdir_run(specialists[0])
  b = _host(mg.load_params(run, "pretrained"))
  t = [_host(mg.load_params(run, w)) for w in specialists]
  want = jax.tree.map(lambda p, x, y: (p + 0.75 * (x - p) + 0.75 * (y - p)).astype(np.float32),
                      b, *t)
  reference = EmbeddingModel(like.spec, want, like.tokenizer)
  np.testing.assert_allclose(jaxembed.load(str(out)).encode(TEXTS),
                             reference.encode(TEXTS), atol=2e-5)
  # A second merge into the same folder is refused, naming the flag.
  again = subprocess.run(
      [sys.executable, "-m", "experiments.merge", f"--workdirs={','.join(specialists)}",
       "--method=uniform", f"--out={out}"],
      cwd=REPO, env=user_env(), capture_output=True, text=True, timeout=300)
  assert again.returncode == 2 and "--out=" in again.stderr


def test_merging_refuses_runs_of_different_models_and_single_runs(specialists, tmp_path):
  # A workdir whose saved model differs (another width): refused before any loading.
  other = tmp_path / "other"
  (other / "checkpoints").mkdir(parents=True)
  config = json.loads(open(f"{specialists[0]}/config.json").read())
  config["model"]["bert_overrides"]["hidden_size"] = 16
  (other / "config.json").write_text(json.dumps(config))
  with pytest.raises(ConfigError, match="differ in model.bert_overrides"):
    mg.workdir_run(specialists[0], others=[str(other)])
  with pytest.raises(ConfigError, match="not a training workdir"):
    mg.workdir_run(str(tmp_path))
  with pytest.raises(ConfigError, match="at least two"):
    mg.merge_runs(specialists[:1], "uniform")
  with pytest.raises(ConfigError, match="--method='average'; valid"):
    mg.merge_runs(specialists, "average")


def test_the_balanced_merging_study_runs_resumes_and_scores_from_its_json(tmp_path,
                                                                         tfds_dir):
  """experiments/merge_balanced.py at the smoke size: every model scored per test query,
  the table's means and intervals made from those scores, and a rerun trains, merges
  and scores nothing again."""
  from conftest import import_experiment
  out = str(tmp_path / "mb")
  args = [sys.executable, "-m", "experiments.merge_balanced", f"--out={out}", "--seeds=0",
          "--variant=smoke", "--joint=balanced", f"--tfds_dir={tfds_dir}"]
  first = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=user_env())
  assert first.returncode == 0, first.stderr[-3000:]
  with open(f"{out}/results.json") as f:
    results = json.load(f)
  rr = results["rr"]
  assert set(rr) == {"pretrained", "A", "B", "balanced", "uniform", "task_arithmetic",
                     "self_positioning"}
  assert results["queries"] == {"wordnet": 100, "manpages": 100, "docstrings": 100}
  alphas = results["merges"]["self_positioning"]["0"]["alphas"]
  assert len(alphas) == 2 and results["merges"]["uniform"]["0"]["alphas"] == [0.5, 0.5]
  study = import_experiment("merge_balanced")
  text = study.table(results)
  sp = [100 * np.mean(rr["self_positioning"]["0"][n]["2_32"]) for n in results["sets"]]
  assert f"| Self Positioning | {sp[0]:.1f} | {sp[1]:.1f} | {sp[2]:.1f} | " \
         f"{np.mean(sp):.1f} |" in text
  diff = 100 * (np.mean(rr["self_positioning"]["0"]["manpages"]["2_32"])
                - np.mean(rr["balanced"]["0"]["manpages"]["2_32"]))
  assert f"| self_positioning − balanced, man pages, (2, 32) | > 0 | {diff:+.1f} |" in text
  assert "resampled" not in text.split("Paired differences")[1]   # not trained
  second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=user_env())
  assert second.returncode == 0, second.stderr[-3000:]
  with open(f"{out}/results.json") as f:
    assert json.load(f) == results        # wall times included: nothing was redone
