"""The training data sources a config may name (`data.source`, or each
`data.mixture[i]['source']`), registered with what they need and what they give.

A source registers once with its capabilities; the rest of the trainer reads those
fields and never branches on a source's name. A new source is one `@register_pairs`
(text pairs, mixable) or `@register_inputs` (a run of its own, e.g. image-caption
pairs) in this module or in the user's code before `train.run.setup`:

    @sources.register_pairs("my_pairs", path_field="train_file")
    def my_pairs(d, component, ctx):
      return MyBuilder(component["path"], tfds_dir=d.tfds_dir).as_data_source("train")
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax

from jaxembed.data import builders, pipeline
from jaxembed.data.packaged import FASHION_MNIST_CLASSES
from jaxembed.errors import ConfigError
from jaxembed.evals.tasks import ZeroShotTask


@dataclasses.dataclass(frozen=True)
class Source:
  """One registered training source.

  path_field: the data.* field that holds its path when data.source names it (None:
    it needs no path). mixable: may be an entry of data.mixture. graded: it gives
    graded pairs (sentence1, sentence2, score) for the ranking objectives. what: what
    it gives, in words, for error messages.
  query_modality: what its queries are ('text', or 'image' for image-caption pairs).
  pairs: (d, component, ctx) -> the array_record data source of its training pairs
    (text sources). inputs: (config, tokenizer) -> (dataset, eval tasks, centring
    texts) for a source that makes a whole run's inputs itself (not mixable).
  files: component -> the user's files it reads (fingerprinted in the workdir).
  repeats_classes: d -> whether its batches may hold one class more than once (then
    only an objective that reads the classes may train on it).
  kinds: a mixture entry may name its own 'pair_kinds' (WordNet's kinds of pair, so
    that one mixture can weigh them apart, e.g. balanced).
  """
  name: str
  path_field: str | None = None
  mixable: bool = True
  graded: bool = False
  what: str = "text pairs"
  query_modality: str = "text"
  pairs: Callable | None = None
  inputs: Callable | None = None
  files: Callable[[dict], list[str]] = lambda component: []
  repeats_classes: Callable = lambda d: False
  kinds: bool = False


_REGISTRY: dict[str, Source] = {}


def _register(source: Source) -> Source:
  if source.name in _REGISTRY:
    raise ValueError(f"data source {source.name!r} is already registered")
  _REGISTRY[source.name] = source
  return source


def register_pairs(name: str, **fields):
  """Registers a text-pair source: the decorated (d, component, ctx) -> data source."""
  def wrap(fn):
    _register(Source(name, pairs=fn, **fields))
    return fn
  return wrap


def register_inputs(name: str, **fields):
  """Registers a source that builds a run's inputs itself: the decorated
  (config, tokenizer) -> (dataset, eval tasks, centring texts)."""
  def wrap(fn):
    _register(Source(name, inputs=fn, mixable=False, **fields))
    return fn
  return wrap


def names(*, in_mixture: bool = False) -> list[str]:
  return [n for n, s in _REGISTRY.items() if s.mixable or not in_mixture]


def get(name, field: str) -> Source:
  """The source registered as `name`, or a ConfigError naming `field` and the valid
  values there."""
  in_mixture = field != "data.source"
  source = _REGISTRY.get(name) if isinstance(name, str) else None
  if source is None:
    valid = names(in_mixture=in_mixture)
    raise ConfigError(f"{field}: source={name!r}; valid values: {valid}")
  if in_mixture and not source.mixable:
    where = f"data.source={name!r}" + (f" and data.{source.path_field}"
                                       if source.path_field else "")
    raise ConfigError(f"{field}: {source.what} (source={name!r}) train alone, not in a "
                      f"mixture: set {where}")
  return source


def unmixed(d) -> Source | None:
  """The source data.source names when there is no data.mixture, else None."""
  return None if d.mixture else get(d.source, "data.source")


class Context:
  """What the sources of one run share: the WordNet builder, made once (training
  pairs and the held-out WordNet queries come from the same split)."""

  def __init__(self, d):
    self._d = d
    self._wordnet = {}

  def wordnet(self, pair_kinds=None):
    """The WordNet builder of `pair_kinds` (default data.pair_kinds). Every choice of
    kinds holds out the same synsets, so the test split is the same for all."""
    d = self._d
    kinds = tuple(pair_kinds or d.pair_kinds)
    if kinds not in self._wordnet:
      self._wordnet[kinds] = builders.wordnet_pairs(
          wordnet_dir=d.wordnet_dir, tfds_dir=d.tfds_dir,
          holdout_fraction=d.holdout_fraction, seed=d.split_seed, pair_kinds=kinds)
    return self._wordnet[kinds]


@register_pairs("wordnet", kinds=True)
def _wordnet(d, component, ctx):
  return ctx.wordnet(component.get("pair_kinds")).as_data_source("train")


@register_pairs("foldoc")
def _foldoc(d, component, ctx):
  return builders.foldoc_pairs(foldoc_dir=d.foldoc_dir,
                               tfds_dir=d.tfds_dir).as_data_source("train")


@register_pairs("file", path_field="train_file",
                files=lambda component: [component["path"]])
def _file(d, component, ctx):
  return builders.pairs_file(path=component["path"], tfds_dir=d.tfds_dir,
                             on_error=d.on_error, columns=d.columns).as_data_source("train")


@register_pairs("beir", path_field="beir_dir",
                files=lambda c: [os.path.join(c["path"], "qrels", f"{c['split']}.tsv"),
                                 os.path.join(c["path"], "queries.jsonl"),
                                 os.path.join(c["path"], "corpus.jsonl")])
def _beir(d, component, ctx):
  return builders.beir_pairs(folder=component["path"], split=component["split"],
                             tfds_dir=d.tfds_dir, on_error=d.on_error).as_data_source("train")


@register_pairs("scored_file", path_field="train_file", mixable=False, graded=True,
                what="graded pairs", files=lambda component: [component["path"]])
def _scored_file(d, component, ctx):
  return builders.scored_pairs_file(path=component["path"], tfds_dir=d.tfds_dir,
                                    on_error=d.on_error).as_data_source("train")


@register_inputs("fashion_mnist", query_modality="image", what="(image, caption) pairs",
                 repeats_classes=lambda d: not d.distinct_classes)
def _fashion_mnist(config, tokenizer):
  """(image, caption) pairs for an image-text two-tower model; zero-shot evaluation."""
  d = config.data
  fm = builders.fashion_mnist(tfds_dir=d.tfds_dir)
  dataset = pipeline.image_caption_dataset(
      fm.as_data_source("train"), tokenizer=tokenizer, class_names=FASHION_MNIST_CLASSES,
      batch_size=config.train.batch_size, seq_len=d.seq_len, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      max_examples=d.max_train_examples, workers=d.workers,
      distinct_classes=d.distinct_classes)
  tasks = [ZeroShotTask.from_source("fashion_mnist", fm.as_data_source("test"),
                                    FASHION_MNIST_CLASSES, config.eval.images)]
  return dataset, tasks, []
