"""The README's own-data quickstart, run as written: the example files, the preset
config, column mapping; nothing packaged is built or evaluated."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, run_train, user_env
from jaxembed.data import readers
from jaxembed.errors import ConfigError, DataError


def test_columns_map_the_files_names_to_ours(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text(json.dumps({"q": "a question", "a": "its answer", "n": "a wrong one"})
                  + "\n")
  rows, _ = readers.read_pairs(str(path), columns="anchor=q,positive=a,negative=n")
  assert rows == [{"anchor": "a question", "positive": "its answer",
                   "negatives": ["a wrong one"]}]
  with pytest.raises(DataError, match=r"no \['anchor', 'positive'\] field \(the record "
                                      r"has \['a', 'n', 'q'\]\).*data.columns="):
    readers.read_pairs(str(path))
  with pytest.raises(ConfigError, match="data.columns='query=q': 'query' is not one of"):
    readers.read_pairs(str(path), columns="query=q")
  with pytest.raises(ConfigError, match="'anchor' is not <ours>=<column in the file>"):
    readers.read_pairs(str(path), columns="anchor")


def test_quickstart_trains_on_a_file_and_evaluates_only_the_users_sts(tmp_path):
  data, tfds = tmp_path / "my_data", tmp_path / "tfds"
  made = subprocess.run([sys.executable, "examples/make_own_data.py", f"--out={data}"],
                        cwd=REPO, capture_output=True, text=True, env=user_env(),
                        timeout=120)
  assert made.returncode == 0, made.stderr[-2000:]
  assert len((data / "pairs.jsonl").read_text().splitlines()) == 200
  done = run_train([f"--config=configs/own_data.py:train={data}/pairs.jsonl,"
                    f"sts={data}/sts.csv,steps=20",
                    "--config.data.columns=anchor=question,positive=answer",
                    f"--workdir={tmp_path / 'run'}", f"--config.data.tfds_dir={tfds}"],
                   timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  built = {n for n in os.listdir(tfds) if not n.startswith(".") and n != "downloads"}
  assert built == {"local_pairs"}             # no WordNet, nothing packaged
  # a file read from the disk is not "downloaded" (tfds' own message on stdout)
  assert "Downloading" not in done.stdout + done.stderr
  with open(tmp_path / "run" / "metrics.json") as f:
    metrics = json.load(f)
  for rows in (metrics["before"], metrics["after"]):
    assert {k for k in rows[0] if k not in ("layer", "dim")} == {"sts/spearman"}
    assert len(rows) == 30
  train = [json.loads(l) for l in (tmp_path / "run" / "train_log.jsonl").read_text()
           .splitlines()]
  assert train[-1]["step"] == 20
