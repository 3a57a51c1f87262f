"""What a run reads: its training datasets (one, a weighted mixture, or Fashion-MNIST
image-caption pairs) and its evaluation tasks, all checked against the config before
anything is trained."""

from __future__ import annotations

import logging
import math
import os
import zlib

import jax

from jaxembed.data import builders, packaged, pipeline, readers, wordnet
from jaxembed.errors import ConfigError
from jaxembed.losses.registry import distill_settings
from jaxembed.train.centring import centring_sample
from jaxembed.workdir import file_fingerprint
from jaxembed.evals import splits
from jaxembed.evals.tasks import (ClassificationTask, ClusteringTask, RetrievalTask,
                                  STSTask)
from jaxembed.train import sources


def make_inputs(config, model, tokenizer, teacher_tokenizer=None, anchor_texts: int = 0):
  """(the per-host grain dataset, the evaluation tasks, the texts that centre the
  layers with model.centred_exits (else []), about `anchor_texts` training texts for
  the anchor's map (loss.distill.anchor_map; else [])) for `model`; with
  `teacher_tokenizer` (a teacher other than the student) each batch also carries its
  texts through it."""
  d = config.data
  single = _unmixed_source(d)
  if single is not None and single.inputs is not None:
    if model.query_modality != single.query_modality:
      raise ConfigError(f"data.source={d.source!r} gives {single.what}: its queries are "
                        f"{single.query_modality}s, and the model's are "
                        f"{model.query_modality}s (an image-text pair needs "
                        "model.encoder='two_tower', model.two_tower.towers='image_text')")
    if teacher_tokenizer is not None:
      raise ConfigError(f"loss.distill.teacher={config.loss.distill.teacher!r}: a teacher "
                        f"other than the student reads text pairs; data.source="
                        f"{d.source!r} gives {single.what}")
    return (*single.inputs(config, tokenizer), [])
  if model.query_modality != "text":
    raise ConfigError(f"the model's queries are {model.query_modality}s; data.source="
                      f"{d.source!r} gives text pairs: use a source that gives "
                      f"{model.query_modality}s ({_by_modality(model.query_modality)})")
  dataset, train_sources, weights, ctx = _train_dataset(config, tokenizer,
                                                        teacher_tokenizer)
  def sample(n):
    # The records a run trains on: the first data.max_train_examples of each source.
    limit = d.max_train_examples
    return centring_sample([pipeline.text_fields(s, limit=limit) for s in train_sources],
                           weights, n)
  centring = sample(config.model.centring_texts) if model.centred_exits else []
  anchor = sample(anchor_texts) if anchor_texts else []
  held_out = ctx.wordnet() if config.eval.wordnet_queries else None
  return (dataset, build_eval_tasks(config, held_out, training_sources=train_sources),
          centring, anchor)


def _train_dataset(config, tokenizer, teacher_tokenizer=None):
  """(this host's pair dataset, its sources, the mixture's weights, the sources'
  Context) for a text-pair run; `tokenizer` None: batches of texts (PairTexts)."""
  d = config.data
  batch = config.train.batch_size
  components = mixture_components(d)
  loss_weights = mixture_loss_weights(config, components)
  ctx = sources.Context(d)
  train_sources = [train_source(d, c, ctx) for c in components]
  common = dict(tokenizer=tokenizer, batch_size=batch, seq_len=d.seq_len,
                seed=config.seed, process_index=jax.process_index(),
                process_count=jax.process_count(), max_examples=d.max_train_examples,
                workers=d.workers, pack_length=d.pack_length, pack_granule=d.pack_granule,
                teacher_tokenizer=teacher_tokenizer)
  instructions = [c["instruction"] for c in components]
  weights = mixture_weights(d, components, train_sources)
  if len(components) == 1 and not d.no_duplicates and loss_weights is None:
    dataset = pipeline.pair_dataset(train_sources[0], instruction=instructions[0],
                                    **common)
  else:
    dataset = pipeline.planned_dataset(
        train_sources, names=[c["name"] for c in components], instruction=instructions,
        weights=weights, no_duplicates=d.no_duplicates,
        loss_weights=loss_weights, **common)
  return dataset, train_sources, weights, ctx


def train_text_batches(config):
  """The texts of each batch a text-pair run of `config` trains on, in step order
  ({'anchor', 'positive': [batch] str[, 'negatives'], 'instruction'}; this host's rows):
  the same pairs for a peer library, or for reading what step k saw."""
  single = _unmixed_source(config.data)
  if single is not None and single.inputs is not None:
    raise ConfigError(f"data.source={config.data.source!r} gives {single.what}, not text "
                      "pairs")
  return iter(_train_dataset(config, None)[0])


def _unmixed_source(d):
  """sources.unmixed(d), after the check both entry points make of data.workers."""
  if d.workers < 0:
    raise ConfigError(f"data.workers={d.workers} must be >= 0")
  return sources.unmixed(d)


def _by_modality(modality: str) -> list[str]:
  return [n for n in sources.names() if sources.get(n, "data.source").query_modality
          == modality]


# What data.source and its paths are when a mixture names the data instead.
_UNMIXED = {"source": "wordnet", "train_file": "", "beir_dir": ""}
_COMPONENT_KEYS = ("source", "path", "weight", "split", "instruction", "pair_weight",
                   "teacher_weight", "pair_kinds")


def mixture_components(d) -> list[dict]:
  """data.mixture as checked dicts {name, source, path, split, weight, instruction,
  pair_weight, teacher_weight}; without a mixture, the one dataset named by
  data.source. An entry's 'instruction' (its queries' instruction in training) defaults
  to data.query_instruction; 'pair_weight' and 'teacher_weight' (default 1) scale the
  pair objective and loss.distill's teacher terms on that dataset's batches (e.g.
  teacher_weight 0 on a labelled set, pair_weight 0 on text kept only for the teacher).
  'pair_kinds' (a WordNet entry only; default data.pair_kinds) picks the kinds of pair
  that entry gives, so that two entries can weigh WordNet's kinds apart."""
  if not d.mixture:
    field = sources.get(d.source, "data.source").path_field
    path = d[field] if field else ""
    specs = [{"source": d.source, "path": path, "split": d.beir_split, "weight": 1.0}]
    fields = ["data.source"]
  else:
    ignored = [f"data.{k}={d[k]!r}" for k in ("source", "train_file", "beir_dir")
               if d[k] != _UNMIXED[k]]
    if ignored:
      # e.g. the default job (a WordNet + FOLDOC mixture) with data.source=file
      raise ConfigError(f"{', '.join(ignored)} would be ignored: data.mixture is set and "
                        "names the training data; add the dataset to data.mixture, or "
                        "set --config.data.mixture='()' to train on data.source alone")
    specs = [dict(spec) for spec in d.mixture]
    fields = [f"data.mixture[{i}]" for i in range(len(specs))]
  out = []
  for field, spec in zip(fields, specs):
    bad = sorted(set(spec) - set(_COMPONENT_KEYS))
    if bad:
      raise ConfigError(f"{field}: unknown keys {bad}; valid: {list(_COMPONENT_KEYS)}")
    source = spec.get("source")
    kind = sources.get(source, field)
    path = spec.get("path", "")
    if kind.path_field and not path:
      where = f"data.{kind.path_field}" if field == "data.source" else f"{field}['path']"
      raise ConfigError(f"{field}: source={source!r} needs a path: set {where}")
    try:
      weight = float(spec.get("weight", 1.0))
    except (TypeError, ValueError):
      weight = float("nan")
    if not weight > 0 or not math.isfinite(weight):
      raise ConfigError(f"{field}: weight={spec.get('weight')!r} must be a positive number")
    terms = {}
    for key in ("pair_weight", "teacher_weight"):
      try:
        terms[key] = float(spec.get(key, 1.0))
      except (TypeError, ValueError):
        terms[key] = float("nan")
      if not terms[key] >= 0 or not math.isfinite(terms[key]):
        raise ConfigError(f"{field}: {key}={spec.get(key)!r} must be a finite number >= 0")
    if not terms["pair_weight"] and not terms["teacher_weight"]:
      raise ConfigError(f"{field}: pair_weight and teacher_weight are both 0: its batches "
                        "would train nothing")
    instruction = spec.get("instruction", d.query_instruction)
    if not isinstance(instruction, str):
      raise ConfigError(f"{field}: instruction={instruction!r} must be a string")
    pair_kinds = spec.get("pair_kinds")
    if pair_kinds is not None:
      if not kind.kinds:
        raise ConfigError(f"{field}: pair_kinds is for a WordNet entry; source="
                          f"{source!r} gives one kind of pair")
      if isinstance(pair_kinds, str) or not pair_kinds:
        raise ConfigError(f"{field}: pair_kinds={pair_kinds!r} must be a non-empty list, "
                          "e.g. ('gloss_example',)")
      pair_kinds = tuple(pair_kinds)
      unknown = sorted(set(pair_kinds) - set(wordnet.PAIR_KINDS))
      if unknown:
        raise ConfigError(f"{field}: pair_kinds: unknown {unknown}; valid: "
                          f"{list(wordnet.PAIR_KINDS)}")
    out.append({"name": f"{field} ({path})" if kind.path_field else field,
                "source": source, "path": os.path.expanduser(path),
                "split": spec.get("split", d.beir_split), "weight": weight,
                "instruction": instruction, "pair_kinds": pair_kinds, **terms})
  return out


def mixture_weights(d, components, train_sources) -> list[float]:
  """Each dataset's draw weight: its entry's weight, times (its pairs used, after
  data.max_train_examples)^(1 / data.size_temperature) when that is > 0."""
  weights = [c["weight"] for c in components]
  t = d.size_temperature
  if not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0):
    raise ConfigError(f"data.size_temperature={t!r} must be a finite number >= 0 "
                      "(0: the weights as given)")
  if not t:
    return weights
  limit = d.max_train_examples
  sizes = [len(s) if limit is None else min(limit, len(s)) for s in train_sources]
  weights = [w * n ** (1.0 / t) for w, n in zip(weights, sizes)]
  total = sum(weights)
  logging.info("data.size_temperature=%g: draw probabilities %s", t, ", ".join(
      f"{c['name']} {w / total:.3f} ({n} pairs)"
      for c, w, n in zip(components, weights, sizes)))
  return weights


def mixture_loss_weights(config, components):
  """None when every dataset weighs the loss terms alike (1, 1), else one
  (pair_weight, teacher_weight) per dataset, checked against loss.distill."""
  weights = [(c["pair_weight"], c["teacher_weight"]) for c in components]
  if all(w == (1.0, 1.0) for w in weights):
    return None
  if distill_settings(config.loss) is None:
    for c in components:
      if c["teacher_weight"] != 1.0:
        raise ConfigError(f"{c['name']}: teacher_weight={c['teacher_weight']} scales "
                          "loss.distill's teacher terms, and loss.distill has none (its "
                          "weight and anchor_weight are 0)")
      if not c["pair_weight"]:
        raise ConfigError(f"{c['name']}: pair_weight=0 without loss.distill: its batches "
                          "would train nothing")
  elif not config.loss.distill.pair_weight and any(t == 0 for _, t in weights):
    bad = next(c["name"] for c in components if not c["teacher_weight"])
    raise ConfigError(f"{bad}: teacher_weight=0 with loss.distill.pair_weight=0: its "
                      "batches would train nothing")
  return weights


def data_fingerprint(config) -> dict:
  """{path: {'size', 'sha256'}} of the user's training files (data.source / mixture
  entries 'file' and 'beir'), recorded in the workdir and checked on resume."""
  d = config.data
  single = sources.unmixed(d)
  if single is not None and single.inputs is not None:
    return {}
  paths = [p for c in mixture_components(d) for p in sources.get(c["source"], "data.source").files(c)]
  return {os.path.abspath(p): file_fingerprint(p) for p in paths if os.path.isfile(p)}


def train_source(d, component: dict, ctx: sources.Context):
  """The array_record data source of one training dataset."""
  return sources.get(component["source"], "data.source").pairs(d, component, ctx)


def training_texts(sources) -> set[str]:
  """Every anchor and positive text of the training sources."""
  texts = set()
  for source in sources:
    texts.update(pipeline.text_fields(source, ("anchor", "positive")))
  return texts


def ood_pairs(name: str, config, exclude: set[str] = frozenset()) -> list[dict]:
  """The out-of-domain set `name`'s (summary, text) pairs, less any pair with a text in
  `exclude` (the run's training texts: a three-word manual-page summary can be a
  WordNet lemma), so the set stays out of domain whatever the run trains on."""
  e = config.eval
  builder = builders.ood_retrieval(name, tfds_dir=config.data.tfds_dir,
                                   source_dir=e.man_dir if name == "manpages" else "")
  rows = pipeline.as_numpy_records(builder.as_data_source("test"))
  rows = [r for r in rows if r["anchor"] not in exclude and r["positive"] not in exclude]
  # A fixed order that mixes sections and modules, so eval.ood_queries=N takes a
  # sample of the whole set, not its first files.
  return sorted(rows, key=lambda r: (zlib.crc32(r["page"].encode()), r["page"]))


def build_eval_tasks(config, wordnet_builder, training_sources=()) -> list:
  """The evaluation suite: packaged data (WordNet held-out retrieval, Lee, SimLex), the
  out-of-domain sets kept apart from `training_sources`, and the user's own (a BEIR
  folder, STS files), all scored on the same grid."""
  e = config.eval
  split, seed = e.get("split", "all"), e.get("split_seed", 0)
  if split not in splits.SPLITS:
    raise ConfigError(f"eval.split={split!r}; valid values: {list(splits.SPLITS)}")

  def half(task):      # eval.split's queries of the task; its corpus is kept whole
    return task.with_queries(lambda q: splits.keep(q, task.name, split, seed))
  tasks = []
  if e.wordnet_queries:
    test = pipeline.as_numpy_records(wordnet_builder.as_data_source("test"))
    tasks.append(half(RetrievalTask.from_pairs("wordnet", test, e.wordnet_queries)))
  if e.lee:
    docs, pairs = packaged.load_lee()
    tasks.append(STSTask.from_pairs("lee", docs, pairs))
  if e.simlex:
    tasks.append(STSTask.from_word_pairs("simlex", packaged.load_simlex()))
  if e.wordsim:
    tasks.append(STSTask.from_word_pairs("wordsim", packaged.load_wordsim()))
  for name in ("polarity", "newsgroup"):
    if e[name]:
      source = builders.packaged_text(name, tfds_dir=config.data.tfds_dir).as_data_source("test")
      rows = pipeline.as_numpy_records(source)
      rows.sort(key=lambda r: r["text"])   # a fixed order, whatever the file's
      texts, labels = [r["text"] for r in rows], [int(r["label"]) for r in rows]
      tasks.append(ClassificationTask.from_labelled(name, texts, labels))
      tasks.append(ClusteringTask.from_labelled(f"{name}_clusters", texts, labels))
  trained = training_texts(training_sources) if e.ood else set()
  for name in e.ood:
    rows = ood_pairs(name, config, trained)
    tasks.append(half(RetrievalTask.from_pairs(name, rows, e.ood_queries or None)))
  if e.beir_dir:
    queries, corpus, qrels = readers.read_beir(os.path.expanduser(e.beir_dir), e.beir_split,
                                               on_error=config.data.on_error,
                                               field="eval.beir_dir")
    tasks.append(half(RetrievalTask.from_qrels("beir", queries, corpus, qrels)))
  for path in e.sts_files:
    rows, _ = readers.read_scored_pairs(os.path.expanduser(path),
                                        on_error=config.data.on_error)
    name = os.path.splitext(os.path.basename(path))[0]
    tasks.append(STSTask.from_text_pairs(name, rows))
  if not tasks:
    raise ConfigError("eval: no evaluation task is enabled (eval.wordnet_queries, "
                      "eval.lee, eval.simlex, eval.wordsim, eval.polarity, "
                      "eval.newsgroup, eval.ood, eval.beir_dir, eval.sts_files)")
  return tasks
