"""Staged recipes (config.stages): the second stage starts from the first one's final
weights; a run stopped by SIGTERM in stage 2 and rerun with the same command ends
exactly where an uninterrupted run ends; bad stages fail at config time naming the
stage and the field."""

import json

import jax
import numpy as np
import pytest

import jaxembed
from conftest import logged_steps, run_train, sigterm_after_step
from jaxembed.errors import ConfigError
from jaxembed.train import stages
from jaxembed.workdir import Workdir

STAGED = '''
from configs import common


def get_config(arg=None):
  c = common.pair_loss_config(tiny=True)
  c.train.log_every = 1
  c.train.checkpoint_every = 50
  c.stages = (
      {"name": "pairs", "train.steps": 30},
      # A second stage with another objective, learning rate and trainable set: only
      # layer 2 and the embeddings' layer norm train, the rest stays as stage 1 left it.
      {"name": "tune", "train.steps": 160, "loss.name": "sigmoid",
       "optim.learning_rate": 3e-4, "optim.warmup_steps": 5,
       "optim.trainable": ("encoder/layer_1/",)},
  )
  return c
'''


def write_config(tmp_path):
  path = tmp_path / "staged.py"
  path.write_text(STAGED)
  return str(path)


def args(config, workdir, tfds_dir):
  return [f"--config={config}", f"--workdir={workdir}", f"--config.data.tfds_dir={tfds_dir}"]


def leaves(model):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(model.params)}


@pytest.mark.slow
def test_two_stages_resume_across_the_boundary(tmp_path, tfds_dir):
  config = write_config(tmp_path)
  straight = tmp_path / "straight"
  done = run_train(args(config, straight, tfds_dir))
  assert done.returncode == 0, done.stderr[-3000:]
  first = straight / "stages" / "0-pairs"
  assert (first / "checkpoints" / "30").is_dir()
  assert not (first / "metrics.json").exists()    # evaluated once, at the end
  with open(straight / "metrics.json") as f:
    metrics = json.load(f)
  with open(first / "metrics_before.json") as f:
    assert metrics["before"] == json.load(f)       # the model before any training
  assert metrics["after"] != metrics["before"]

  # Stage 2 began at stage 1's final weights: what it froze is bit-identical to them,
  # what it trained moved.
  one, two = leaves(jaxembed.load(str(first))), leaves(jaxembed.load(str(straight)))
  assert one.keys() == two.keys()
  trained = [k for k in one if "layer_1" in k]
  frozen = [k for k in one if "layer_1" not in k]
  assert trained and frozen
  for k in frozen:
    np.testing.assert_array_equal(one[k], two[k], err_msg=k)
  assert all(not np.array_equal(one[k], two[k]) for k in trained)
  with open(straight / "config.json") as f:
    final = json.load(f)
  assert final["loss"]["name"] == "sigmoid" and final["train"]["steps"] == 160

  resumed = tmp_path / "resumed"
  code, out = sigterm_after_step(args(config, resumed, tfds_dir), resumed, 20)
  assert code == 0, out[-3000:]
  stopped_at = max(logged_steps(resumed))
  assert 20 <= stopped_at < 160, f"signal did not land in stage 2: {stopped_at}"
  assert not (resumed / "metrics.json").exists()

  again = run_train(args(config, resumed, tfds_dir))
  assert again.returncode == 0, again.stderr[-3000:]
  assert "stage 1/2 (pairs) finished earlier" in again.stderr
  assert "resuming from" in again.stderr
  assert logged_steps(resumed) == list(range(1, 161)), "stage 2's log must read as one run"
  with open(resumed / "metrics.json") as f:
    assert json.load(f) == metrics
  for k, v in leaves(jaxembed.load(str(resumed))).items():
    np.testing.assert_array_equal(v, two[k], err_msg=k)


def test_bad_stages_fail_naming_the_stage_and_field(smoke_config):
  c = smoke_config()
  cases = [
      (({"train.stpes": 3},), "stages[0]: no config field 'train.stpes'"),
      (({"name": "a"}, {"name": "a"}), "stages[1]: name 'a' must be unique"),
      (({"model.pooling": "cls"},), "may not change model.*"),
      (({"optim": 3},), "'optim' is a group"),
      (({"train.steps": "many"},), "stages[0]: train.steps='many'"),
      ((3,), "stages[0] must be a dict"),
  ]
  for entries, message in cases:
    c.stages = entries
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("*", r"\*").replace("(", r"\(")):
      stages.plan(c, "/nowhere")


def test_plan_sets_each_stage_and_keeps_the_base(smoke_config):
  c = smoke_config()
  c.stages = ({"train.steps": 7}, {"name": "b", "loss.name": "sigmoid"})
  first, second = stages.plan(c, "/w")
  assert (first.name, first.workdir, first.last) == ("stage0", "/w/stages/0-stage0", False)
  assert (second.name, second.workdir, second.last) == ("b", "/w", True)
  assert first.config.train.steps == 7 and second.config.train.steps == c.train.steps
  assert second.config.loss.name == "sigmoid" and first.config.loss.name == c.loss.name
  assert c.loss.name != "sigmoid"     # the base config is untouched


def test_a_field_added_later_at_its_default_does_not_block_a_resume(tmp_path, smoke_config):
  c = smoke_config()
  saved = json.loads(c.to_json_best_effort())
  del saved["stages"]                   # a workdir written before the field existed
  wd = Workdir(str(tmp_path))
  wd.write(Workdir.CONFIG, json.dumps(saved))
  assert wd.check_config(c) is True
  c.stages = ({"train.steps": 3},)      # not the default: that is another run
  with pytest.raises(ConfigError, match="stages"):
    wd.check_config(c)


@pytest.mark.slow
def test_nv_embed_two_stage_config_trains_its_second_stage_without_in_batch_negatives(
    tmp_path, tfds_dir):
  """configs/smollm2_nv_embed.py (smoke: a tiny random decoder on SmolLM2's
  vocabulary): stage 1 with in-batch and hard negatives, stage 2 with the query's own
  negatives only, LoRA with dropout in both; the run ends with metrics and a model."""
  rng = np.random.default_rng(0)
  words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
  rows = [{"anchor": " ".join(rng.choice(words, 4)), "positive": " ".join(rng.choice(words, 6)),
           "negatives": [" ".join(rng.choice(words, 6))]} for _ in range(200)]
  data = tmp_path / "negatives.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))
  workdir = tmp_path / "nv"
  done = run_train(["--config=configs/smollm2_nv_embed.py:smoke", f"--workdir={workdir}",
                    f"--config.data.tfds_dir={tfds_dir}", f"--config.data.train_file={data}"])
  assert done.returncode == 0, done.stderr[-3000:]
  with open(workdir / "config.json") as f:
    final = json.load(f)
  with open(workdir / "stages" / "0-retrieval" / "config.json") as f:
    first = json.load(f)
  assert first["loss"]["in_batch_negatives"] and not final["loss"]["in_batch_negatives"]
  assert final["optim"]["lora"]["dropout"] == 0.1 and final["model"]["pooling"] == "latent"
  with open(workdir / "metrics.json") as f:
    assert json.load(f)["after"]
  assert len(leaves(jaxembed.load(str(workdir)))) > 0
