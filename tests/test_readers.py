"""The user's own data: pairs/triplets/negatives in JSONL, CSV, TSV; STS files; a BEIR
folder; bad records rejected or skipped with file and line; and a BEIR folder and an
STS file training and evaluating through the config, as the packaged data does."""

import json
import re

import pytest

from conftest import run_train
from jaxembed.data import readers
from jaxembed.errors import DataError


def write(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(text.encode() if isinstance(text, str) else text)
  return str(path)


def test_pairs_in_three_formats(tmp_path):
  jsonl = write(tmp_path / "p.jsonl", '{"anchor": "a", "positive": "b", "negatives": ["x", "y"]}\n'
                                      '{"anchor": "c", "positive": "d", "negatives": ["z", "w"]}\n')
  csv_ = write(tmp_path / "p.csv", 'anchor,positive,negative_1,negative_2\n'
                                   'a,b,x,y\n"c, quoted",d,z,w\n')
  tsv = write(tmp_path / "p.tsv", "anchor\tpositive\tnegative\na\tb\tx\n")
  rows, bad = readers.read_pairs(jsonl)
  assert rows[0] == {"anchor": "a", "positive": "b", "negatives": ["x", "y"]} and not bad
  rows, _ = readers.read_pairs(csv_)
  assert rows[1] == {"anchor": "c, quoted", "positive": "d", "negatives": ["z", "w"]}
  rows, _ = readers.read_pairs(tsv)
  assert rows == [{"anchor": "a", "positive": "b", "negatives": ["x"]}]


BAD = [
    (b'{"anchor": "a", "positive": "b"}\n{"anchor": "a"\n', ".jsonl", ":2: not a JSON object"),
    (b'{"anchor": "a", "positive": ""}\n{"anchor": "a", "positive": "b"}\n', ".jsonl",
     ":1: field 'positive' is missing or empty"),
    (b'{"anchor": "a", "positive": "b", "negatives": ["x"]}\n'
     b'{"anchor": "c", "positive": "d", "negatives": ["x", "y"]}\n', ".jsonl",
     ":2: 2 negatives where earlier records have 1"),
    (b'{"anchor": "\xff", "positive": "b"}\n{"anchor": "a", "positive": "b"}\n', ".jsonl",
     ":1: not UTF-8"),
    (b"anchor,positive\na,b\nc\n", ".csv", ":3: 1 columns where the header has 2"),
]


@pytest.mark.parametrize("content, ext, message", BAD)
def test_bad_records_rejected_or_skipped(tmp_path, content, ext, message, caplog):
  path = write(tmp_path / f"pairs{ext}", content)
  with pytest.raises(DataError, match=re.escape(path + message)):
    readers.read_pairs(path)
  rows, bad = readers.read_pairs(path, on_error="skip")
  assert len(bad) == 1 and bad[0].startswith(path + message) and len(rows) >= 1
  assert "skipped 1 bad records" in caplog.text


def test_scored_pairs_and_non_numeric_score(tmp_path):
  path = write(tmp_path / "sts.tsv", "sentence1\tsentence2\tscore\na\tb\t4.5\nc\td\thigh\n")
  with pytest.raises(DataError, match=re.escape(path) + r":3: score 'high' is not a number"):
    readers.read_scored_pairs(path)
  rows, bad = readers.read_scored_pairs(path, on_error="skip")
  assert rows == [("a", "b", 4.5)] and len(bad) == 1


def make_beir(folder, n=40):
  """A small BEIR folder: query i is about topic i; its relevant document says so."""
  topics = ["cats", "the ocean", "volcanoes", "chess", "bread", "jazz", "rain", "trains",
            "honey", "glaciers"]
  corpus = [{"_id": f"d{i}", "title": topics[i % 10],
             "text": f"A note number {i} about {topics[i % 10]}."} for i in range(n)]
  queries = [{"_id": f"q{i}", "text": f"tell me about {topics[i % 10]} ({i})"} for i in range(n)]
  write(folder / "corpus.jsonl", "".join(json.dumps(r) + "\n" for r in corpus))
  write(folder / "queries.jsonl", "".join(json.dumps(r) + "\n" for r in queries))
  for split, ids in (("train", range(0, 30)), ("test", range(30, 40))):
    write(folder / "qrels" / f"{split}.tsv", "query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t{1 + i % 2}\n" for i in ids))
  return str(folder)


def test_read_beir(tmp_path):
  folder = make_beir(tmp_path / "beir")
  queries, corpus, qrels = readers.read_beir(folder, "test")
  assert sorted(queries) == [f"q{i}" for i in range(30, 40)] and len(corpus) == 40
  assert qrels["q31"] == {"d31": 2} and corpus["d3"] == "chess A note number 3 about chess."


@pytest.mark.slow
def test_beir_folder_and_sts_file_train_and_evaluate_through_config(tmp_path, tfds_dir):
  beir = make_beir(tmp_path / "beir")
  sts = write(tmp_path / "my_sts.csv", "sentence1,sentence2,score\n" + "".join(
      f"a {w} sat here,the {w} sat there,{s}\n" for w, s in
      (("cat", 4.5), ("dog", 4.0), ("ship", 1.0), ("tree", 2.5), ("lamp", 3.0))))
  workdir = tmp_path / "run"
  done = run_train(["--config=configs/ood_ablation.py:smoke,arm=pairs", f"--workdir={workdir}",
                    f"--config.data.tfds_dir={tfds_dir}", "--config.data.source=beir",
                    f"--config.data.beir_dir={beir}", f"--config.eval.beir_dir={beir}",
                    f"--config.eval.sts_files=('{sts}',)", "--config.eval.wordnet_queries=0",
                    "--config.eval.simlex=False", "--config.train.steps=4",
                    "--config.train.batch_size=8"])
  assert done.returncode == 0, done.stderr[-3000:]
  with open(workdir / "metrics.json") as f:
    after = json.load(f)["after"]
  assert {"beir/ndcg_at_10", "beir/mrr_at_10", "my_sts/spearman"} <= set(after[0])
  assert len(after) == 6  # every (layer, dim) cell of the smoke grid
