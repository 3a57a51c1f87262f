"""The MTEB adapter: passes MTEB's encoder protocol, and `mteb.evaluate` on a local
custom STS task (a user's STS file) gives jaxembed's own Spearman for the same cell."""

import csv

import numpy as np
import pytest

import jaxembed
from conftest import MINILM
from jaxembed.data.packaged import load_simlex
from jaxembed.data.readers import read_scored_pairs
from jaxembed.errors import ConfigError
from jaxembed.evals.tasks import STSTask
from jaxembed.mteb_adapter import MTEBEncoder

mteb = pytest.importorskip("mteb")
datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def model():
  return jaxembed.load(MINILM)


@pytest.fixture(scope="module")
def sts_file(tmp_path_factory):
  """A user's STS file: 300 SimLex-999 pairs spread over the set, as phrases."""
  rows = load_simlex()[::3]
  path = tmp_path_factory.mktemp("sts") / "my_sts.csv"
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["sentence1", "sentence2", "score"])
    for a, b, s in rows:
      w.writerow([f"a {a}", f"the {b}", s])
  return str(path)


def _task(path):
  """An MTEB STS task read from the file with the csv module (not jaxembed's reader)."""
  from mteb.abstasks.sts import AbsTaskSTS
  from mteb.abstasks.task_metadata import TaskMetadata

  with open(path, encoding="utf-8") as f:
    rows = list(csv.DictReader(f))

  class UserSTS(AbsTaskSTS):
    metadata = TaskMetadata(
        type="STS", name="UserSTS", main_score="cosine_spearman",
        description="A user's own STS file.", reference=None,
        dataset={"path": "local", "revision": "1"}, category="t2t",
        eval_splits=["test"], eval_langs=["eng-Latn"], date=None, dialect=None,
        domains=None, task_subtypes=None, license="cc-by-4.0",
        annotations_creators="human-annotated", modalities=["text"],
        sample_creation="found", bibtex_citation="")
    min_score, max_score = 0, 10

    def load_data(self, num_proc=None, **kwargs):
      self.dataset = datasets.DatasetDict({"test": datasets.Dataset.from_dict({
          "sentence1": [r["sentence1"] for r in rows],
          "sentence2": [r["sentence2"] for r in rows],
          "score": [float(r["score"]) for r in rows]})})
      self.data_loaded = True

  return UserSTS()


def test_adapter_passes_mteb_protocol(model):
  enc = MTEBEncoder(model, layer=2, dim=64)
  assert isinstance(enc, mteb.models.EncoderProtocol)
  meta = enc.mteb_model_meta
  assert meta.embed_dim == 64 and meta.name == "jaxembed/model-L2_D64"
  with pytest.raises(ConfigError, match="dim"):
    MTEBEncoder(model, layer=2, dim=1000)
  with pytest.raises(ConfigError, match="EmbeddingModel"):
    MTEBEncoder("all-MiniLM-L6-v2")


@pytest.mark.parametrize("layer,dim", [(2, 64), (6, 384)])
def test_mteb_evaluate_equals_own_spearman(model, sts_file, tmp_path, layer, dim):
  rows, _ = read_scored_pairs(sts_file)
  own = STSTask.from_text_pairs("user", rows)
  ours = own.score(model.encode(own.texts, layer=layer, dim=dim))["spearman"]

  result = mteb.evaluate(MTEBEncoder(model, layer=layer, dim=dim), _task(sts_file),
                         cache=None, show_progress_bar=False)
  scores = result.task_results[0].scores["test"][0]
  assert scores["cosine_spearman"] == pytest.approx(ours, abs=1e-6)
  assert 0.2 < ours < 0.9                      # a real correlation, not a degenerate one


def test_query_prompt_reaches_queries_only(model):
  """MTEB's prompt type 'query' gets the model's query prompt; documents get none."""
  import dataclasses
  prompted = jaxembed.api.EmbeddingModel(
      dataclasses.replace(model.spec, query_instruction="query: "), model.params,
      model.tokenizer)
  enc = MTEBEncoder(prompted, layer=3)
  texts = ["a dog runs", "interest rates rose"]
  batches = [{"text": texts[:1]}, {"text": texts[1:]}]
  q = enc.encode(batches, prompt_type=mteb.types.PromptType.query)
  d = enc.encode(batches, prompt_type=mteb.types.PromptType.document)
  np.testing.assert_allclose(q, model.encode(texts, layer=3, instruction="query: "),
                             atol=1e-6)
  np.testing.assert_allclose(d, model.encode(texts, layer=3), atol=1e-6)
  assert not np.allclose(q, d, atol=1e-3)


def test_pairwise_similarity_is_the_rows_cosine(model):
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
  want = [x @ y / (np.linalg.norm(x) * np.linalg.norm(y)) for x, y in zip(a, b)]
  enc = MTEBEncoder(model, layer=1, dim=8)
  np.testing.assert_allclose(enc.similarity_pairwise(a, b), want, rtol=1e-5)
