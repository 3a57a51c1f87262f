"""The supervised classification path behind the MRL reproduction: arms are distinct
real models (an FF model at dim m has an m-wide representation), training lowers the
MRL loss, head accuracy and PCA agree with independent computations, and the
experiment runs end to end at smoke scale, resuming from its results."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, import_experiment, user_env
from configs import mrl_fashion_mnist
from jaxembed.data import builders, pipeline
from jaxembed.errors import ConfigError
from jaxembed.train import classify


def test_arms_are_distinct_models():
  config = mrl_fashion_mnist.get_config()
  shapes = {}
  for arm in ("mrl", "mrl_e", "ff2", "ff64"):
    model = classify.make_classifier(config, arm)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               *model.example_inputs()))["params"]
    shapes[arm] = {k: v.value.shape if hasattr(v, "value") else v.shape
                   for k, v in params.items() if k.startswith("head")}
    shapes[arm]["rep"] = params["representation"]["kernel"].value.shape
  assert shapes["ff2"] == {"rep": (64, 2), "head_0_kernel": (2, 10), "head_0_bias": (10,)}
  assert shapes["ff64"]["rep"] == (64, 64) and len(shapes["ff64"]) == 3
  assert shapes["mrl_e"] == {"rep": (64, 64), "head_0_kernel": (64, 10),
                             "head_0_bias": (10,)}
  assert [shapes["mrl"][f"head_{n}_kernel"] for n in range(6)] == [
      (m, 10) for m in config.dims]
  with pytest.raises(ConfigError, match="arm 'ff'"):
    classify.make_classifier(config, "ff")


@pytest.fixture(scope="module")
def fashion(tfds_dir):
  return builders.fashion_mnist(tfds_dir=tfds_dir)


def test_training_lowers_the_mrl_loss_and_heads_score_as_numpy_does(fashion):
  config = mrl_fashion_mnist.get_config("smoke")
  config.train.update(steps=80, batch_size=32, learning_rate=3e-3, warmup_steps=5)
  source = fashion.as_data_source("train")
  dataset = pipeline.labelled_image_dataset(source, batch_size=32, seed=0,
                                            max_examples=256)
  trained = classify.train_classifier(config, "mrl", dataset, seed=0,
                                      devices=jax.devices()[:2], log_every=10)
  assert len(trained.losses) == 8 and all(np.isfinite(v) for _, v in trained.losses)
  x, y = pipeline.labelled_images(source, limit=256)
  assert x.shape == (256, 28, 28, 1) and 0.0 <= x.min() and x.max() <= 1.0
  z = classify.features(trained, x)
  got = classify.head_accuracy(trained, z, y)
  p = trained.params
  loss = 0.0                  # the MRL loss on these images, in float64
  for n, m in enumerate(config.dims):
    logits = np.float64(z[:, :m]) @ p[f"head_{n}_kernel"] + p[f"head_{n}_bias"]
    assert got[m] == pytest.approx(np.mean(np.argmax(logits, 1) == y))
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    loss -= np.mean(logp[np.arange(len(y)), y])
  # The heads start at zero: the loss starts at len(dims) * log(10).
  assert loss < 0.85 * len(config.dims) * np.log(10)
  assert got[config.dims[-1]] > 0.2          # chance is 0.1


def test_pca_matches_scikit_learn():
  from sklearn.decomposition import PCA
  from jaxembed.evals.classification import pca_reduce as pca
  rng = np.random.default_rng(0)
  a = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
  b = rng.normal(size=(50, 12))
  train, test = pca(a, b, 3)
  ref = PCA(n_components=3).fit(a)
  want_train, want_test = ref.transform(a), ref.transform(b)
  signs = np.sign(np.sum(train * want_train, axis=0))       # components up to sign
  np.testing.assert_allclose(train * signs, want_train, atol=1e-8)
  np.testing.assert_allclose(test * signs, want_test, atol=1e-8)


def test_the_experiment_runs_and_resumes(tfds_dir, tmp_path):
  out = str(tmp_path / "mrl")
  args = [sys.executable, "-m", "experiments.mrl_fashion_mnist",
          "--config=configs/mrl_fashion_mnist.py:smoke", f"--out={out}", "--seeds=0",
          f"--config.data.tfds_dir={tfds_dir}"]
  first = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=user_env())
  assert first.returncode == 0, first.stderr[-3000:]
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  runs = results["runs"]
  assert set(runs) == {"mrl_s0", "mrl_e_s0", "ff2_s0", "ff16_s0", "truncated_s0", "pca_s0"}
  assert set(runs["mrl_s0"]["linear"]) == {"2", "4", "16"}
  assert set(runs["ff2_s0"]["linear"]) == {"2"}
  assert set(runs["pca_s0"]["1nn"]) == set(runs["truncated_s0"]["1nn"]) == {"2", "4", "16"}
  # Truncation keeps the largest FF model's full vector at its own dim.
  assert runs["truncated_s0"]["linear"]["16"] == runs["ff16_s0"]["linear"]["16"]
  with open(os.path.join(out, "table.md")) as f:
    text = f.read()
  assert "| 2 |" in text and "MRL − FF" in text
  second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=user_env())
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stderr.count("skipped") == 4


def test_the_protocol_study_runs_resumes_and_scores_from_its_predictions(tfds_dir,
                                                                         tmp_path):
  """experiments/mrl_study.py: every test image's prediction stored per (arm, seed,
  measure, dim); accuracies and intervals recomputed from them; a rerun keeps runs."""
  out = str(tmp_path / "mrl_study")
  args = [sys.executable, "-m", "experiments.mrl_study", "--variant=smoke", f"--out={out}",
          "--seeds=0,1", f"--tfds_dir={tfds_dir}"]
  first = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=user_env())
  assert first.returncode == 0, first.stderr[-3000:]
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  runs, labels = results["runs"], results["labels"]
  assert set(runs) == {f"{a}_s{s}" for a in ("mrl", "mrl_e", "ff2", "ff16")
                       for s in (0, 1)}
  assert set(runs["mrl_s0"]["linear"]) == {"2", "4", "16"}
  assert set(runs["ff16_s1"]["pca"]["1nn"]) == {"2", "4"}
  for record in runs.values():
    for measure in ("head", "linear", "1nn"):
      assert all(len(p) == len(labels) for p in record[measure].values())
  # The ff16 model's own linear probe at 16 and its 'truncation' to 16 would agree;
  # truncation stops below the full width.
  assert "16" not in runs["ff16_s0"]["truncated"]["linear"]
  mrl_study = import_experiment("mrl_study")
  got = mrl_study.correct(results, "ff", "linear", 2, [0, 1])
  want = [[float(p == t) for p, t in zip(runs[f"ff2_s{s}"]["linear"]["2"], labels)]
          for s in (0, 1)]
  np.testing.assert_array_equal(got, want)
  with open(os.path.join(out, "table.md")) as f:
    text = f.read()
  mean = 100 * np.mean(want, axis=1).mean()
  assert "| 2 | " in text and f"{mean:.1f} ± " in text
  assert "| MRL − FF-2, linear probe, dim 2 | > 0 |" in text
  second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=user_env())
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stderr.count("in results.json, kept") == 8
