"""No-duplicate batches and weighted mixtures: checked against slow obvious loops, and
deterministic, resumable and the same with worker processes or several hosts."""

import json

import numpy as np
import pytest

from jaxembed.data import batching, builders, pipeline, wordnet
from jaxembed.data.tokenizer import Tokenizer
from jaxembed.errors import DataError
from jaxembed.models import read_model_folder
from conftest import MINILM


def reference_pack(order, batch_size, texts):
  """The obvious algorithm: each batch scans every remaining record in order and takes
  those that share no text with it, until full."""
  remaining, batches = list(order), []
  while True:
    batch, seen = [], set()
    for i in remaining:
      if len(batch) == batch_size:
        break
      if not seen & set(texts[i]):
        batch.append(i)
        seen |= set(texts[i])
    if len(batch) < batch_size:
      return batches
    batches.append(batch)
    remaining = [i for i in remaining if i not in batch]


def test_pack_matches_the_obvious_loop_and_repeats_nothing():
  rng = np.random.default_rng(0)
  # 300 records over a small vocabulary of 60 "texts": many collisions.
  texts = [tuple(f"t{v}" for v in rng.integers(0, 60, size=2)) for _ in range(300)]
  keys = [batching.text_keys(t) for t in texts]
  order = rng.permutation(300)
  for batch_size in (4, 8, 16):
    got = batching.pack_epoch(order, batch_size, keys)
    want = reference_pack(order, batch_size, texts)
    np.testing.assert_array_equal(got, np.array(want).reshape(-1, batch_size))
    for batch in got:
      flat = [t for i in batch for t in set(texts[i])]
      assert len(flat) == len(set(flat))
    assert len(set(got.ravel())) == got.size        # a record at most once an epoch
  plain = batching.pack_epoch(order, 16, None)
  np.testing.assert_array_equal(plain, order[:288].reshape(18, 16))


def test_mixture_draws_by_weight_and_walks_each_dataset_by_epochs():
  sizes, weights, b = [40, 100, 24], [1.0, 3.0, 0.5], 8
  plan = batching.BatchPlan(sizes, b, seed=3, weights=weights)
  picks = [plan(i) for i in range(6000)]
  counts = np.bincount([k for k, _ in picks], minlength=3)
  expected = 6000 * np.array(weights) / sum(weights)
  assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected))
  for k, n in enumerate(sizes):
    rows = [r for kk, r in picks if kk == k]
    per_epoch = n // b
    for e in range(3):   # each epoch: a permutation of the dataset, reshuffled
      epoch = np.concatenate(rows[e * per_epoch:(e + 1) * per_epoch])
      assert len(set(epoch)) == per_epoch * b and epoch.max() < n
    assert not np.array_equal(np.concatenate(rows[:per_epoch]),
                              np.concatenate(rows[per_epoch:2 * per_epoch]))
  # Random access (a resumed run) sees the same plan as the walk from batch 0.
  late = batching.BatchPlan(sizes, b, seed=3, weights=weights)
  for i in (5999, 4096, 17, 4095):
    k, rows = late(i)
    assert k == picks[i][0] and np.array_equal(rows, picks[i][1])
  other = batching.BatchPlan(sizes, b, seed=4, weights=weights)
  assert [other(i)[0] for i in range(50)] != [k for k, _ in picks[:50]]


def test_bad_weights_and_small_datasets_are_named():
  with pytest.raises(DataError, match="must be positive"):
    batching.BatchPlan([10, 10], 4, 0, weights=[1.0, 0.0])
  with pytest.raises(DataError, match="dataset 1 has 3 examples"):
    batching.BatchPlan([10, 3], 4, 0)


@pytest.fixture(scope="module")
def sources(tfds_dir, tmp_path_factory):
  """The WordNet train split (its glosses repeat across pairs) and a small JSONL file
  in which every anchor occurs three times."""
  wn = builders.wordnet_pairs(wordnet_dir=wordnet.DEFAULT_DIR, tfds_dir=tfds_dir,
                              holdout_fraction=0.05, seed=0)
  path = tmp_path_factory.mktemp("mix") / "pairs.jsonl"
  with open(path, "w") as f:
    for i in range(60):
      f.write(json.dumps({"anchor": f"question {i // 3}", "positive": f"answer {i}"}) + "\n")
  local = builders.pairs_file(path=str(path), tfds_dir=tfds_dir)
  return [wn.as_data_source("train"), local.as_data_source("train")]


def make(sources, **kw):
  tok = Tokenizer(read_model_folder(MINILM).tokenizer, 16)
  args = dict(names=["wordnet", "file"], tokenizer=tok, batch_size=8, seq_len=16, seed=1,
              weights=[1.0, 2.0], no_duplicates=True, max_examples=200)
  return pipeline.planned_dataset(sources, **{**args, **kw})


def take(it, n):
  return [next(it) for _ in range(n)]


def ids(batches):
  return np.stack([b["anchor"]["input_ids"] for b in batches] +
                  [b["positive"]["input_ids"] for b in batches])


def test_planned_stream_has_no_duplicates_and_resumes_exactly(sources):
  stream = take(iter(make(sources)), 30)
  for batch in stream:
    rows = [tuple(r[m > 0]) for side in ("anchor", "positive")
            for r, m in zip(batch[side]["input_ids"], batch[side]["attention_mask"])]
    assert len(rows) == len(set(rows)), "a text occurs twice in a batch"
  # Both datasets are used, each batch from one of them; the file (weight 2) has 20
  # distinct questions, each in 3 pairs, so only no-duplicate packing keeps them apart.
  tok = Tokenizer(read_model_folder(MINILM).tokenizer, 16)
  question = tok.encode(["question"], pad_to=16)["input_ids"][0, 1]
  from_file = [np.all(b["anchor"]["input_ids"][:, 1] == question) for b in stream]
  mixed = [np.any(b["anchor"]["input_ids"][:, 1] == question) for b in stream]
  assert from_file == mixed and 10 < sum(from_file) < 30
  np.testing.assert_array_equal(ids(take(iter(make(sources)), 30)), ids(stream))
  assert not np.array_equal(ids(take(iter(make(sources, seed=2)), 30)), ids(stream))
  it = iter(make(sources))
  take(it, 11)
  state = it.get_state()
  fresh = iter(make(sources))
  fresh.set_state(state)
  np.testing.assert_array_equal(ids(take(fresh, 19)), ids(stream[11:]))


def test_worker_processes_and_hosts_see_the_same_stream(sources):
  stream = take(iter(make(sources)), 12)
  it = iter(make(sources, workers=2))
  first = take(it, 5)
  state = it.get_state()
  np.testing.assert_array_equal(ids(first), ids(stream[:5]))
  resumed = iter(make(sources, workers=2))
  resumed.set_state(state)
  np.testing.assert_array_equal(ids(take(resumed, 7)), ids(stream[5:]))
  halves = [take(iter(make(sources, process_index=i, process_count=2)), 12)
            for i in range(2)]
  for b in range(12):
    np.testing.assert_array_equal(
        np.concatenate([halves[0][b]["positive"]["input_ids"],
                        halves[1][b]["positive"]["input_ids"]]),
        stream[b]["positive"]["input_ids"])


def test_mixed_negative_counts_are_refused(sources, tmp_path, tfds_dir):
  path = tmp_path / "triplets.jsonl"
  path.write_text("".join(json.dumps({"anchor": f"a{i}", "positive": f"p{i}",
                                      "negative": f"n{i}"}) + "\n" for i in range(20)))
  triplets = builders.pairs_file(path=str(path), tfds_dir=tfds_dir).as_data_source("train")
  with pytest.raises(DataError, match="same number of hard negatives.*wordnet: 0.*file: 1"):
    make([sources[0], triplets])


@pytest.mark.slow
def test_mixture_trains_through_the_cli_with_workers(tmp_path, tfds_dir):
  from conftest import run_train
  path = tmp_path / "pairs.tsv"
  path.write_text("anchor\tpositive\n" + "".join(f"query {i // 2}\tdocument {i}\n"
                                                for i in range(64)))
  mixture = f"({{'source': 'wordnet'}}, {{'source': 'file', 'path': '{path}', 'weight': 3}})"
  workdir = tmp_path / "run"
  common = ["--config=configs/minilm_wordnet_2d.py:smoke", f"--workdir={workdir}",
            f"--config.data.tfds_dir={tfds_dir}", "--config.train.steps=6",
            "--config.eval.before=False", "--config.data.no_duplicates=True"]
  done = run_train(common + [f"--config.data.mixture={mixture}",
                             "--config.data.workers=1"])
  assert done.returncode == 0, done.stderr[-3000:]
  assert "loss" in (workdir / "train_log.jsonl").read_text()
  # A bad component is named at config time, with the valid values.
  bad = run_train(common + [f"--workdir={tmp_path / 'bad'}",
                            "--config.data.mixture=({'source': 'wordnett'},)"])
  assert bad.returncode == 2
  assert ("data.mixture[0]: source='wordnett'; valid values: "
          "['wordnet', 'foldoc', 'file', 'beir']") in bad.stderr
  assert "Traceback" not in bad.stderr


def test_each_mixture_entry_carries_its_own_query_instruction():
  """A batch's anchors carry its dataset's instruction (the default one where the
  entry names none): the ids equal the tokenizer's own encoding with that instruction,
  and the positives carry none."""
  import ml_collections
  from jaxembed import defaults
  from jaxembed.errors import ConfigError
  from jaxembed.train import inputs
  tok = Tokenizer(read_model_folder(MINILM).tokenizer, 24)
  a = [{"anchor": f"question {i}", "positive": f"answer {i}"} for i in range(40)]
  b = [{"anchor": f"word {i}", "positive": f"gloss {i}"} for i in range(40)]
  d = defaults.base_config().data
  d.query_instruction = "query: "
  d.mixture = ({"source": "file", "path": "a.jsonl", "instruction": "Retrieve the answer: "},
               {"source": "file", "path": "b.jsonl"})
  components = inputs.mixture_components(d)
  instructions = [c["instruction"] for c in components]
  assert instructions == ["Retrieve the answer: ", "query: "]
  ds = pipeline.planned_dataset([a, b], names=["a", "b"], tokenizer=tok, batch_size=8,
                                seq_len=24, seed=0, weights=[1.0, 1.0],
                                instruction=instructions)
  plan = batching.BatchPlan([40, 40], 8, 0, weights=[1.0, 1.0])
  seen = set()
  for step, batch in zip(range(12), iter(ds)):
    k, rows = plan(step)
    records = [(a, b)[k][i] for i in rows]
    seen.add(k)
    want = tok.encode([r["anchor"] for r in records], pad_to=24,
                      instruction=instructions[k])
    np.testing.assert_array_equal(batch["anchor"]["input_ids"], want["input_ids"])
    plain = tok.encode([r["positive"] for r in records], pad_to=24)
    np.testing.assert_array_equal(batch["positive"]["input_ids"], plain["input_ids"])
  assert seen == {0, 1}
  # Each dataset's loss-term weights travel with its batches' rows.
  weighted = pipeline.planned_dataset([a, b], names=["a", "b"], tokenizer=tok,
                                      batch_size=8, seq_len=24, seed=0,
                                      weights=[1.0, 1.0],
                                      loss_weights=[(1.0, 0.0), (0.5, 2.0)])
  for step, batch in zip(range(12), iter(weighted)):
    k, _ = plan(step)
    np.testing.assert_array_equal(batch["pair_weight"], [(1.0, 0.5)[k]] * 8)
    np.testing.assert_array_equal(batch["teacher_weight"], [(0.0, 2.0)[k]] * 8)
  assert "pair_weight" not in next(iter(ds))
  bad = ml_collections.ConfigDict(d.to_dict())
  bad.mixture = ({"source": "wordnet", "instruction": 3},)
  with pytest.raises(ConfigError, match=r"data.mixture\[0\]: instruction=3 must be a string"):
    inputs.mixture_components(bad)


def test_a_registered_source_is_a_mixture_entry_like_the_built_in_ones(tmp_path,
                                                                        monkeypatch):
  """A user's source registers once; the checks, the error's list of valid values, the
  data fingerprint and the training source all come from its registration."""
  import ml_collections
  from jaxembed import defaults
  from jaxembed.errors import ConfigError
  from jaxembed.train import inputs, sources
  monkeypatch.setattr(sources, "_REGISTRY", dict(sources._REGISTRY))
  rows = [{"anchor": f"q{i}", "positive": f"d{i}"} for i in range(5)]
  calls = []

  @sources.register_pairs("reversed", path_field="train_file",
                          files=lambda c: [c["path"]])
  def _reversed(d, component, ctx):
    calls.append(component["path"])
    return [{"anchor": r["positive"], "positive": r["anchor"]} for r in rows]

  path = tmp_path / "mine.txt"
  path.write_text("anything\n")
  d = defaults.base_config().data
  d.mixture = ({"source": "wordnet"}, {"source": "reversed", "path": str(path)})
  components = inputs.mixture_components(d)
  assert components[1]["name"] == f"data.mixture[1] ({path})"
  assert inputs.train_source(d, components[1], sources.Context(d))[0] == {
      "anchor": "d0", "positive": "q0"}
  assert calls == [str(path)]
  config = defaults.base_config()
  config.data = d
  assert list(inputs.data_fingerprint(config)) == [str(path)]
  bad = ml_collections.ConfigDict(d.to_dict())
  bad.mixture = ({"source": "reversed"},)
  with pytest.raises(ConfigError, match=r"data.mixture\[0\]: source='reversed' needs a "
                                        r"path: set data.mixture\[0\]\['path'\]"):
    inputs.mixture_components(bad)
  bad.mixture = ({"source": "nope"},)
  with pytest.raises(ConfigError, match=r"valid values: \['wordnet', 'foldoc', 'file', "
                                        r"'beir', 'reversed'\]"):
    inputs.mixture_components(bad)
  with pytest.raises(ValueError, match="'reversed' is already registered"):
    sources.register_pairs("reversed")(_reversed)
