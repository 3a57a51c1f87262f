"""Licence, version and provenance: what a user (or a paper's appendix) needs to say
which jaxembed made a result."""

import json
import os
import subprocess
import tomllib
from importlib import metadata

import jaxembed
from conftest import REPO
from jaxembed import version


def test_licence_is_spdx_and_shipped():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  assert project["license"] == "Apache-2.0"
  assert project["license-files"] == ["LICENSE"]
  with open(os.path.join(REPO, "LICENSE")) as f:
    text = f.read()
  assert "Apache License" in text and "Version 2.0" in text


def test_version_is_the_installed_distributions():
  assert jaxembed.__version__ == metadata.version("jaxembed")


def test_a_workdir_records_version_and_commit(smoke_config, tmp_path):
  from jaxembed import train
  config = smoke_config(**{"train.steps": 2, "eval.before": False,
                           "train.checkpoint_every": 2})
  train.train_and_evaluate(config, str(tmp_path / "run"))
  with open(tmp_path / "run" / "version.json") as f:
    recorded = json.load(f)
  assert recorded["jaxembed"] == metadata.version("jaxembed")
  head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                        text=True)
  if head.returncode == 0 and version.git_commit() is not None:
    assert recorded["commit"].split("-")[0] == head.stdout.strip()
  else:  # not run from a checkout: nothing is made up
    assert recorded["commit"] is None


def test_warmup_longer_than_the_run_is_clamped_with_a_warning(caplog):
  import ml_collections
  import numpy as np
  from jaxembed import defaults
  from jaxembed.train.optim import make_schedule
  cfg = defaults.base_config().optim      # warmup 40
  with caplog.at_level("WARNING"):
    schedule = make_schedule(cfg, 4)
  assert "optim.warmup_steps=40 is more than train.steps=4" in caplog.text
  # Linear warmup over the 4 steps, as if warmup_steps were 4 (no decay left).
  clamped = ml_collections.ConfigDict(cfg.to_dict())
  clamped.warmup_steps = 4
  want = make_schedule(clamped, 4)
  np.testing.assert_allclose([float(schedule(i)) for i in range(5)],
                             [float(want(i)) for i in range(5)])
  np.testing.assert_allclose(float(schedule(2)), cfg.learning_rate * 2 / 4, rtol=1e-6)
