"""WordNet parsing and split, and the grain pipeline's determinism and resumption."""

import numpy as np
import pytest

from jaxembed.data import builders, pipeline, wordnet
from jaxembed.data.tokenizer import Tokenizer
from jaxembed.errors import DataError
from jaxembed.models import read_model_folder
from conftest import MINILM

LINE = ('00001740 00 a 02 able 0 galore(ip) 0 005 = 05200169 n 0000 | (usually followed '
        'by `to\') having the necessary means or skill; "able to swim"; "she was able to '
        'program her computer"  \n')


def test_parse_line():
  s = wordnet.parse_line(LINE, "a")
  assert s.id == "00001740-a"
  assert s.lemmas == ("able", "galore")
  assert s.definition == "(usually followed by `to') having the necessary means or skill"
  assert s.examples == ("able to swim", "she was able to program her computer")
  assert s.lex_file == 0                            # the lexicographer file: adj.all
  assert wordnet.parse_line("  1 This software and database is provided\n", "n") is None


@pytest.fixture(scope="module")
def builder(tfds_dir):
  return builders.wordnet_pairs(wordnet_dir=wordnet.DEFAULT_DIR, tfds_dir=tfds_dir,
                                holdout_fraction=0.05, seed=0)


def test_split_is_by_synset_and_leaks_no_text(builder):
  train = pipeline.as_numpy_records(builder.as_data_source("train"))
  test = pipeline.as_numpy_records(builder.as_data_source("test"))
  assert len(train) > 200_000 and len(test) > 1_000
  test_synsets = {r["synset"] for r in test}
  assert not test_synsets & {r["synset"] for r in train}
  test_texts = {r["anchor"] for r in test} | {r["positive"] for r in test}
  assert not test_texts & ({r["anchor"] for r in train} | {r["positive"] for r in train})
  # The split is the hash rule, recomputed independently here.
  assert all(wordnet.is_held_out(s, 0.05, 0) for s in test_synsets)
  assert {r["kind"] for r in train} == {"gloss_example", "lemma_gloss"}


def test_text_fields_reads_the_raw_records_as_tfds_does(builder, monkeypatch):
  source = builder.as_data_source("test")
  expected = [r[f] for r in pipeline.as_numpy_records(source) for f in ("anchor", "positive")]
  # The protobuf path must not fall back to tfds' deserialisation for a Text-only read.
  monkeypatch.setattr(pipeline, "as_numpy_records", lambda *a, **k: pytest.fail("fallback"))
  got = pipeline.text_fields(source, ("anchor", "positive"))
  assert got == expected and len(got) > 2_000
  assert all(isinstance(t, str) for t in got)
  assert pipeline.text_fields(source, ("anchor", "positive"), limit=7) == expected[:14]
  monkeypatch.undo()
  # A source that is not tfds' (or a field that is not Text) goes through the records.
  rows = [{"anchor": "a", "positive": "b"}, {"anchor": "c", "positive": "d"}]
  assert pipeline.text_fields(rows) == ["a", "b", "c", "d"]
  assert pipeline.text_fields(rows, limit=1) == ["a", "b"]


def test_missing_wordnet_dir(tmp_path):
  (tmp_path / "data.noun").write_text("")
  with pytest.raises(DataError, match=r"data.wordnet_dir=.*\['data.verb', 'data.adj', "
                                      r"'data.adv'\] are missing.*apt-get install"):
    builders.wordnet_pairs(wordnet_dir=str(tmp_path), tfds_dir=str(tmp_path / "t"),
                           holdout_fraction=0.05, seed=0)


def make_dataset(builder, seed, **kw):
  tok = Tokenizer(read_model_folder(MINILM).tokenizer, 16)
  return pipeline.pair_dataset(builder.as_data_source("train"), tokenizer=tok,
                               batch_size=8, seq_len=16, seed=seed, max_examples=40, **kw)


def take(it, n):
  return [next(it)["anchor"]["input_ids"] for _ in range(n)]


def test_pipeline_is_deterministic_resumable_and_reshuffles(builder):
  a = take(iter(make_dataset(builder, seed=1)), 12)
  b = take(iter(make_dataset(builder, seed=1)), 12)
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  other = take(iter(make_dataset(builder, seed=2)), 12)
  assert not np.array_equal(np.stack(a), np.stack(other))
  # 40 examples = 5 batches an epoch; epochs 1 and 2 hold the same rows, reshuffled.
  epoch1, epoch2 = np.concatenate(a[:5]), np.concatenate(a[5:10])
  assert not np.array_equal(epoch1, epoch2)
  assert sorted(map(tuple, epoch1)) == sorted(map(tuple, epoch2))
  it = iter(make_dataset(builder, seed=1))
  take(it, 7)
  state = it.get_state()
  fresh = iter(make_dataset(builder, seed=1))
  fresh.set_state(state)
  np.testing.assert_array_equal(np.stack(take(fresh, 5)), np.stack(a[7:12]))


def test_hosts_split_each_global_batch(builder):
  """Two hosts' batches, concatenated in process order, are the one-host batches."""
  one = take(iter(make_dataset(builder, seed=1)), 7)
  halves = [take(iter(make_dataset(builder, seed=1, process_index=i, process_count=2)), 7)
            for i in range(2)]
  for b in range(7):
    assert halves[0][b].shape[0] == 4
    np.testing.assert_array_equal(np.concatenate([halves[0][b], halves[1][b]]), one[b])


def test_empty_split_is_named(builder):
  with pytest.raises(DataError, match=r"split 'train' is empty \(data.max_train_examples=0\)"):
    tok = Tokenizer(read_model_folder(MINILM).tokenizer, 16)
    pipeline.pair_dataset(builder.as_data_source("train"), tokenizer=tok, batch_size=8,
                          seq_len=16, seed=0, max_examples=0)


@pytest.mark.parametrize("instruction", ["Represent the question: ", "query: ",
                                         "Find passages about"])
def test_pool_mask_drops_the_prompt_prefix_as_sentence_transformers_does(instruction):
  """The pooled tokens leave out [CLS] and the instruction: as many leading tokens as
  the instruction tokenised alone has, minus its trailing [SEP] (sentence-transformers'
  prompt length); every other token, [SEP] and the text's own, is pooled."""
  import tokenizers
  tok = Tokenizer(read_model_folder(MINILM).tokenizer, 64)
  raw = tokenizers.Tokenizer.from_file(read_model_folder(MINILM).tokenizer)
  raw.no_padding()
  prompt_length = len(raw.encode(instruction).ids) - 1
  texts = ["a dog runs in the park", "x", "", "naïve café " * 3]
  out = tok.encode(texts, instruction=instruction)
  for row, (mask, pool) in enumerate(zip(out["attention_mask"], out["pool_mask"])):
    n = int(mask.sum())
    assert (pool[:prompt_length] == 0).all(), texts[row]
    assert (pool[prompt_length:n] == 1).all(), texts[row]
    assert (pool[n:] == 0).all()


def test_a_mixture_weighs_wordnets_kinds_apart(smoke_config):
  """Two WordNet entries, one kind each: each gives exactly its kind's training pairs
  (together: the pairs of both kinds), and the held-out queries are unchanged."""
  from jaxembed.errors import ConfigError
  from jaxembed.train import inputs, sources
  config = smoke_config(**{"data.mixture": (
      {"source": "wordnet", "pair_kinds": ("gloss_example",), "weight": 1.0},
      {"source": "wordnet", "pair_kinds": ("lemma_gloss",), "weight": 1.0})})
  d = config.data
  components = inputs.mixture_components(d)
  assert [c["pair_kinds"] for c in components] == [("gloss_example",), ("lemma_gloss",)]
  ctx = sources.Context(d)
  got = [pipeline.as_numpy_records(inputs.train_source(d, c, ctx)) for c in components]
  assert {r["kind"] for r in got[0]} == {"gloss_example"}
  assert {r["kind"] for r in got[1]} == {"lemma_gloss"}
  both = pipeline.as_numpy_records(ctx.wordnet().as_data_source("train"))
  pair = lambda rows: sorted((r["anchor"], r["positive"]) for r in rows)
  assert pair(got[0] + got[1]) == pair(both)
  test = lambda b: pair(pipeline.as_numpy_records(b.as_data_source("test")))
  assert test(ctx.wordnet(("lemma_gloss",))) == test(ctx.wordnet())
  for entry, message in (
      ({"source": "foldoc", "pair_kinds": ("gloss_example",)},
       r"data.mixture\[0\]: pair_kinds is for a WordNet entry"),
      ({"source": "wordnet", "pair_kinds": ("gloss",)},
       r"data.mixture\[0\]: pair_kinds: unknown \['gloss'\]"),
      ({"source": "wordnet", "pair_kinds": "gloss_example"},
       r"data.mixture\[0\]: pair_kinds='gloss_example' must be a non-empty list")):
    with pytest.raises(ConfigError, match=message):
      inputs.mixture_components(smoke_config(**{"data.mixture": (entry,)}).data)


def test_size_temperature_resamples_the_mixture(smoke_config):
  """Weights times size^(1/T): T=1 in proportion to size, T=2 to its square root, 0 as
  given; data.max_train_examples caps the size that counts; a bad T is named."""
  from jaxembed.errors import ConfigError
  from jaxembed.train import inputs
  config = smoke_config(**{"data.mixture": ({"source": "wordnet", "weight": 3.0},
                                            {"source": "foldoc"})})
  d = config.data
  components = inputs.mixture_components(d)
  sizes = [range(400), range(100)]                     # stand-ins with a length
  for t, want in ((0.0, [3.0, 1.0]), (1.0, [1200.0, 100.0]), (2.0, [60.0, 10.0])):
    d.size_temperature = t
    np.testing.assert_allclose(inputs.mixture_weights(d, components, sizes), want)
  d.max_train_examples = 100
  np.testing.assert_allclose(inputs.mixture_weights(d, components, sizes), [30.0, 10.0])
  for bad in (-1.0, float("nan")):
    d.size_temperature = bad
    with pytest.raises(ConfigError, match="data.size_temperature"):
      inputs.mixture_weights(d, components, sizes)


@pytest.mark.parametrize("mixture", [False, True])
def test_train_text_batches_are_the_runs_batches(smoke_config, mixture):
  """The texts train_text_batches gives for step k, tokenised as a run tokenises them
  (the anchors after the query instruction), are the ids of the run's own batch k: one
  dataset, and a WordNet + FOLDOC mixture."""
  import types
  from jaxembed.errors import ConfigError
  from jaxembed.train import inputs
  overrides = {"data.query_instruction": "query: "}
  if mixture:
    overrides["data.mixture"] = ({"source": "wordnet", "weight": 2.0},
                                 {"source": "foldoc"})
  config = smoke_config(**overrides)
  tok = Tokenizer(read_model_folder(MINILM).tokenizer, config.data.seq_len)
  model = types.SimpleNamespace(query_modality="text", centred_exits=False)
  dataset = iter(inputs.make_inputs(config, model, tok)[0])
  texts = inputs.train_text_batches(config)
  for _ in range(3):
    got, want = next(texts), next(dataset)
    assert got["instruction"] == "query: "
    assert len(got["anchor"]) == config.train.batch_size
    for side in ("anchor", "positive"):
      enc = tok.encode(got[side], pad_to=config.data.seq_len,
                       instruction=got["instruction"] if side == "anchor" else "")
      np.testing.assert_array_equal(enc["input_ids"], want[side]["input_ids"])
  with pytest.raises(ConfigError, match="data.workers=-1"):
    inputs.train_text_batches(smoke_config(**{"data.workers": -1}))
