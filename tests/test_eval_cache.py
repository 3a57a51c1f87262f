"""The 'before' grid of an unchanged model is computed once: a second run with the same
model, evaluation sets and settings reads it from the cache (the same rows), and a
change of them (here the grid's dims) misses it. The key's other parts (the weights'
bytes among them) are hashed the same way."""

import json

from conftest import run_train


def _run(tmp_path, name, tfds_dir, cache, *extra):
  workdir = tmp_path / name
  done = run_train(["--config=configs/ood_ablation.py:smoke,arm=pairs",
                    f"--config.data.tfds_dir={tfds_dir}", f"--workdir={workdir}",
                    "--config.train.steps=2", *extra],
                   env={"JAXEMBED_EVAL_CACHE": str(cache)})
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads((workdir / "metrics.json").read_text())["before"], done.stderr


def test_a_second_run_reads_the_before_grid_and_a_change_misses_it(tmp_path, tfds_dir):
  cache = tmp_path / "cache"
  first, log = _run(tmp_path, "a", tfds_dir, cache)
  assert "rows read from" not in log and len(list(cache.glob("*.json"))) == 1
  second, log = _run(tmp_path, "b", tfds_dir, cache)
  assert "rows read from" in log and second == first
  other_dims, log = _run(tmp_path, "c", tfds_dir, cache, "--config.eval.dims=(8,16)")
  assert "rows read from" not in log and {r["dim"] for r in other_dims} == {8, 16}
  assert len(list(cache.glob("*.json"))) == 2
