"""model.dtype='auto': bfloat16 on accelerators; on a CPU the dtype a timed matmul finds
faster, measured once per machine and kept; invalid values named; the choice recorded
in the workdir."""

import json

import pytest

from conftest import run_train
from jaxembed import precision
from jaxembed.errors import ConfigError


def test_accelerators_take_bfloat16_without_measuring(tmp_path):
  assert precision.auto_dtype("gpu", cache=str(tmp_path / "none.json"))[0] == "bfloat16"
  assert precision.auto_dtype("tpu", cache=str(tmp_path / "none.json"))[0] == "bfloat16"
  assert not (tmp_path / "none.json").exists()


@pytest.mark.parametrize("bf16, f32, want", [(0.5, 1.0, "bfloat16"), (0.95, 1.0, "float32"),
                                             (1.6, 1.0, "float32")])
def test_a_cpu_takes_the_measured_faster_dtype(tmp_path, bf16, f32, want):
  cache = tmp_path / "precision.json"
  cache.write_text(json.dumps({precision._cpu_signature(): {"float32": f32,
                                                            "bfloat16": bf16}}))
  dtype, why = precision.auto_dtype("cpu", cache=str(cache))
  assert dtype == want and f"{bf16 / f32:.2f}" in why


def test_a_cpu_is_measured_once_and_kept(tmp_path):
  cache = tmp_path / "sub" / "precision.json"
  dtype, _ = precision.auto_dtype("cpu", cache=str(cache))
  kept = json.loads(cache.read_text())[precision._cpu_signature()]
  assert kept["float32"] > 0 and kept["bfloat16"] > 0
  assert dtype == ("bfloat16" if kept["bfloat16"] < 0.9 * kept["float32"] else "float32")
  assert precision.auto_dtype("cpu", cache=str(cache))[0] == dtype


def test_the_workdir_records_the_dtype_it_ran_with(tmp_path, tfds_dir):
  workdir = tmp_path / "run"
  cache = tmp_path / "precision.json"
  done = run_train(["--config=configs/ood_ablation.py:smoke,arm=pairs",
                    f"--config.data.tfds_dir={tfds_dir}",
                    f"--workdir={workdir}", "--config.model.dtype=auto",
                    "--config.train.steps=2", "--config.eval.before=False"],
                   env={"JAXEMBED_PRECISION_CACHE": str(cache)})
  assert done.returncode == 0, done.stderr[-3000:]
  record = json.loads((workdir / "precision.json").read_text())
  assert record["model.dtype"] == "auto"
  assert record["matmul_dtype"] == precision.auto_dtype("cpu", cache=str(cache))[0]
  assert "model.dtype=auto" in done.stderr


def test_an_unknown_dtype_is_named(smoke_config, tmp_path):
  from jaxembed.train.run import setup
  c = smoke_config(**{"model.dtype": "float16"})
  with pytest.raises(ConfigError, match="model.dtype='float16'"):
    setup(c, str(tmp_path))
