"""The out-of-domain retrieval sets (manual pages, Python docstrings): parsing, the
tfds builder, the evaluation task, and that no training mixture of any config contains
their text."""

import importlib
import os
import pkgutil

import pytest

import configs
from conftest import import_experiment
from jaxembed.data import builders, docstrings, manpages, pipeline
from jaxembed.errors import DataError
from jaxembed.train import inputs, stages
from jaxembed.train import sources as data_sources

PAGE = r""".\" Copyright and licence lines are comments
.TH open 2 2023-02-05 "Linux man-pages 6.03"
.SH NAME
open, openat \- open and possibly create a file
.SH SYNOPSIS
.B #include <fcntl.h>
.SH DESCRIPTION
The
.BR open ()
system call opens the file specified by
.IR pathname .
If the file does not exist, it may be created by
\fBopen\fP() with mode \fI0644\fR\(emsee
.BR umask (2).
.PP
A second paragraph.
.SH RETURN VALUE
Nothing here.
"""


def test_a_roff_page_reduces_to_its_summary_and_description(tmp_path):
  path = tmp_path / "open.2"
  path.write_text(PAGE)
  summary, description = manpages.read_page(str(path))
  assert summary == "open and possibly create a file"
  assert description == (
      "The open() system call opens the file specified by pathname. If the file does "
      "not exist, it may be created by open() with mode 0644-see umask(2). A second "
      "paragraph.")
  (tmp_path / "creat.2").write_text(".so man2/open.2\n")
  assert manpages.read_page(str(tmp_path / "creat.2")) is None      # an include
  (tmp_path / "other.2").write_text(PAGE.replace("Linux man-pages 6.03", "GNU coreutils"))
  assert manpages.read_page(str(tmp_path / "other.2")) is None      # another package


def test_the_installed_manual_pages_give_a_thousand_pairs():
  rows = manpages.read_pages()
  assert len({r["anchor"] for r in rows}) >= 1000
  assert all(r["anchor"] and len(r["positive"].split()) <= manpages.DOC_WORDS for r in rows)
  by_page = {r["page"]: r for r in rows}
  assert by_page["man2/open.2"]["anchor"] == "open and possibly create a file"
  assert by_page["man2/open.2"]["positive"].startswith("The open() system call opens")
  assert "\\f" not in " ".join(r["positive"] for r in rows)        # no font escapes left


def test_missing_manual_pages_are_named(tmp_path):
  with pytest.raises(DataError, match="eval.man_dir.*apt-get install manpages"):
    builders.ood_retrieval("manpages", tfds_dir=str(tmp_path), source_dir=str(tmp_path))


@pytest.mark.parametrize("doc, want", [
    ("Return the sum of two numbers.\n\nBoth numbers must be finite; the result is "
     "rounded as the float type rounds every addition it performs.",
     ("Return the sum of two numbers.", "Both numbers must be finite; the result is "
      "rounded as the float type rounds every addition it performs.")),
    ("Too short.\n\nBody with enough words to pass the minimum body length check here.",
     None),
    ("f(x, y) -> z\n\nA signature line is not a summary, however long the body is "
     "written to be here.", None),
    ("Summary line with no body at all", None),
    ("Parse the given text into parts.\n\nThe parser reads every line of the input and "
     "returns its pieces in order.\n\n:param text: the input\n:returns: parts",
     ("Parse the given text into parts.", "The parser reads every line of the input "
      "and returns its pieces in order."))])
def test_docstrings_split_into_summary_and_body(doc, want):
  assert docstrings.split_docstring(doc) == want


def test_docstrings_are_read_without_importing(tmp_path):
  (tmp_path / "mod.py").write_text(
      'raise SystemExit("imported!")\n'
      'def f():\n'
      '  """Compute the answer to the question.\n\n'
      '  The answer is computed by a long and careful search over every candidate.\n'
      '  """\n')
  (tmp_path / "test").mkdir()
  (tmp_path / "test" / "t.py").write_text(
      'def g():\n  """Skipped because tests are skipped.\n\n'
      '  Tests are left out of the set entirely whatever they say about it.\n  """\n')
  rows = docstrings.read_docstrings(str(tmp_path))
  assert rows == [{"anchor": "Compute the answer to the question.",
                   "positive": "The answer is computed by a long and careful search "
                               "over every candidate.", "page": "mod.f"}]
  assert len(docstrings.read_docstrings()) >= 1000            # the standard library


def test_the_builder_and_the_evaluation_task(tfds_dir, smoke_config):
  rows = manpages.read_pages()
  built = pipeline.as_numpy_records(
      builders.ood_retrieval("manpages", tfds_dir=tfds_dir).as_data_source("test"))
  assert sorted((r["anchor"], r["positive"]) for r in built) == sorted(
      (r["anchor"], r["positive"]) for r in rows)
  config = smoke_config(**{"eval.ood": ("manpages", "docstrings"), "eval.ood_queries": 40,
                          "eval.wordnet_queries": 0})
  tasks = {t.name: t for t in inputs.build_eval_tasks(config, None)
           if t.name in ("manpages", "docstrings")}
  assert set(tasks) == {"manpages", "docstrings"}
  for task in tasks.values():
    assert len(task.queries) == 40 and task.relevance.sum(axis=1).min() >= 1
  config.eval.ood = ("manpages", "news")
  with pytest.raises(DataError, match="'news'; valid: \\['manpages', 'docstrings'\\]"):
    inputs.build_eval_tasks(config, None)


def test_no_training_mixture_meets_the_out_of_domain_sets(tfds_dir):
  """For every config: the out-of-domain pairs its run evaluates share no text with
  what it trains on (one three-word manual-page summary is a WordNet lemma: that pair
  is dropped, the other 2,700 kept)."""
  raw = {name: pipeline.as_numpy_records(builders.ood_retrieval(
      name, tfds_dir=tfds_dir).as_data_source("test")) for name in builders.OOD_SETS}
  checked, seen_data = 0, set()
  for info in pkgutil.iter_modules(configs.__path__):
    module = importlib.import_module(f"configs.{info.name}")
    if not hasattr(module, "get_config") or getattr(module, "KIND", ""):
      continue           # image classification and LIMIT's search train on no text
    variants = [module.get_config(arg) for arg in (None, *getattr(module, "VARIANTS", ()))]
    # Each stage of a staged recipe trains on its own data.
    variants += [s.config for c in variants if c.stages for s in stages.plan(c, "/w")]
    for config in variants:
      arg = config.data.to_json()[:60]
      if (config.data.source == "fashion_mnist" or config.data.to_json() in seen_data
          or (config.data.source == "file" and not config.data.train_file)):
        continue         # images; the same data as before; a user's own file
      seen_data.add(config.data.to_json())
      config.data.tfds_dir = tfds_dir
      components = [c for c in inputs.mixture_components(config.data)
                    if c["source"] == "wordnet" or os.path.exists(c["path"])]
      if not components:
        continue
      d = config.data
      sources = [inputs.train_source(d, c, data_sources.Context(d)) for c in components]
      trained = inputs.training_texts(sources)
      assert len(trained) > 1000
      for name in builders.OOD_SETS:
        kept = inputs.ood_pairs(name, config, trained)
        texts = {t for r in kept for t in (r["anchor"], r["positive"])}
        assert not texts & trained, (info.name, arg, sorted(texts & trained)[:3])
        assert len(kept) >= len(raw[name]) - 5      # only the rare clash is dropped
        checked += 1
  assert checked >= 4


def test_the_ablation_table_is_made_from_the_json_alone():
  ood_ablation = import_experiment("ood_ablation")
  def grid(value):
    return [{"layer": l, "dim": d, "manpages/mrr_at_10": value + l / 100}
            for l in range(1, 7) for d in (32, 64, 128, 256, 384)]
  results = {"before": grid(0.1), "runs": {
      "pairs_s0": grid(0.2), "pairs_s1": grid(0.4), "distill_s0": grid(0.3)}}
  text = ood_ablation.table(results, ["pairs", "distill"], ["0", "1"])
  # (1, 32): before 0.11; pairs 0.21 and 0.41 -> mean 31.0, sample std 14.1; distill
  # has one seed: 31.0 alone
  assert "| (1, 32) | 11.0 | 31.0 ± 14.1 | 31.0 |" in text
  assert "docstrings" not in text            # columns the runs lack are left out


def test_the_ablation_collects_every_finished_run(tmp_path):
  """Runs of earlier invocations (other recipes or seeds) are kept, with "before" from
  whichever run evaluated it and the recorded wall times; nothing is retrained."""
  import json
  ood_ablation = import_experiment("ood_ablation")
  row = [{"layer": 6, "dim": 384, "manpages/mrr_at_10": 0.5}]
  for name, before in (("pairs_s0", row), ("distill_s0", None), ("distill_s1", None)):
    (tmp_path / name).mkdir()
    (tmp_path / name / "metrics.json").write_text(json.dumps(
        {"before": before, "after": row}))
  (tmp_path / "results.json").write_text(json.dumps({"wall_s": {"pairs_s0": 490.0}}))
  results = ood_ablation.run_all(str(tmp_path), ["distill"], ["0", "1"], [])
  assert sorted(results["runs"]) == ["distill_s0", "distill_s1", "pairs_s0"]
  assert results["before"] == row and results["wall_s"] == {"pairs_s0": 490.0}
