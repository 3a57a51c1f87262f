"""jaxembed.evals.retrieval.evaluate against pytrec_eval's own output (a fixture made by
tests/fixtures/make_trec_reference.py): ties, unjudged documents, graded relevance,
queries with nothing relevant, and queries only in the run or only in the qrels."""

import json
import os

import pytest

from jaxembed.evals.retrieval import evaluate

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "trec_reference.json")


def test_matches_pytrec_eval():
  with open(FIXTURE) as f:
    ref = json.load(f)
  got = evaluate(ref["qrels"], ref["run"], ref["metrics"])
  assert set(got) == set(ref["result"])  # only queries in both qrels and run
  assert any(all(v == 0 for v in ref["qrels"][q].values()) for q in got)
  for qid, metrics in ref["result"].items():
    for name, value in metrics.items():
      assert got[qid][name] == pytest.approx(value, abs=1e-6), (qid, name)


def test_metric_names():
  qrels, run = {"q": {"a": 1}}, {"q": {"a": 1.0, "b": 2.0}}
  out = evaluate(qrels, run, ["ndcg_cut.10", "ndcg_cut_10", "recip_rank", "P_1"])
  assert out["q"]["ndcg_cut.10"] == out["q"]["ndcg_cut_10"] == pytest.approx(1 / 1.5849625, 1e-6)
  assert out["q"]["recip_rank"] == 0.5 and out["q"]["P_1"] == 0.0
  with pytest.raises(ValueError, match="'mrr@10' is not supported"):
    evaluate(qrels, run, ["mrr@10"])
