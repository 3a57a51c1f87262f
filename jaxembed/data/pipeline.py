"""grain input pipelines: deterministic given the seed, sharded per host, and
checkpointable (the iterator's state is saved with the model)."""

from __future__ import annotations

import os
import threading
import time

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from tensorflow_datasets.proto import tf_example_generated_pb2

from jaxembed.data import batching, packing
from jaxembed.data.builders import decode_text
from jaxembed.data.packaged import CAPTION_TEMPLATES
from jaxembed.data.tokenizer import Tokenizer
from jaxembed.errors import DataError


class TokenizePairs:
  """Batch of records -> {'anchor': ids/mask, 'positive': ids/mask[, 'negatives'][,
  'score': [batch] float32 grades][, 'pair_weight', 'teacher_weight': [batch]
  float32][, 'teacher': the same sides through `teacher_tokenizer`]}, fixed length."""

  def __init__(self, tokenizer: Tokenizer, seq_len: int, instruction="",
               loss_weights=None, pack_length: int = 0, pack_granule: int = 8,
               teacher_tokenizer: Tokenizer | None = None):
    self.tokenizer = tokenizer
    # A teacher other than the student (loss.distill.teacher) reads the same texts
    # through its own tokenizer, without the query instruction: batch['teacher'].
    self.teacher_tokenizer = teacher_tokenizer
    self.seq_len = seq_len
    # data.pack_length > 0: the batch's texts also go packed into rows of that many
    # tokens ('packed'), each side carrying its tokens' places there ('token_index');
    # see data/packing.py.
    self.pack_length = pack_length
    self.pack_granule = pack_granule
    # Prepended to anchors (queries), not pooled: one string, or one per dataset of a
    # mixture (a batch's 'source' says which dataset it was drawn from).
    self.instruction = instruction
    # None, or one (pair, teacher) weight per dataset of a mixture: the batch's rows
    # carry its dataset's weights of the two loss terms (data.mixture's pair_weight,
    # teacher_weight).
    self.loss_weights = loss_weights

  def __call__(self, batch):
    out = {}
    instruction = self.instruction
    if not isinstance(instruction, str):
      instruction = instruction[int(batch.get("source", 0))]
    texts = {side: [decode_text(t) for t in batch[side]] for side in ("anchor", "positive")}
    for side in ("anchor", "positive"):
      out[side] = self.tokenizer.encode(
          texts[side], pad_to=self.seq_len,
          instruction=instruction if side == "anchor" else "")
    negatives = batch.get("negatives")
    if negatives is not None and len(negatives):
      # grain batches a list field position by position: k arrays of [batch] texts
      columns = [[decode_text(t) for t in col] for col in negatives]
      texts["negatives"] = [t for row in zip(*columns) for t in row]
      shape = (len(columns[0]), len(columns), self.seq_len)
      enc = self.tokenizer.encode(texts["negatives"], pad_to=self.seq_len)
      out["negatives"] = {key: v.reshape(shape) for key, v in enc.items()}
    if self.teacher_tokenizer is not None:
      out["teacher"] = {}
      for side, side_texts in texts.items():
        enc = self.teacher_tokenizer.encode(side_texts, pad_to=self.seq_len)
        out["teacher"][side] = {key: v.reshape(out[side]["input_ids"].shape)
                                for key, v in enc.items()}
    if "score" in batch:    # graded pairs (data.source='scored_file')
      out["score"] = np.asarray(batch["score"], np.float32)
    if self.loss_weights is not None:
      pair, teacher = self.loss_weights[int(batch.get("source", 0))]
      rows = len(out["anchor"]["input_ids"])
      out["pair_weight"] = np.full(rows, pair, np.float32)
      out["teacher_weight"] = np.full(rows, teacher, np.float32)
    if self.pack_length:
      sides = [s for s in ("anchor", "positive", "negatives") if s in out]
      flat = lambda a: a.reshape(-1, a.shape[-1])      # negatives: [b, k, t] -> [b*k, t]
      packed, index = packing.pack_rows([flat(out[s]["attention_mask"]) for s in sides],
                                        [flat(out[s]["input_ids"]) for s in sides],
                                        self.pack_length, self.pack_granule)
      out["packed"] = packed
      for side, idx in zip(sides, index):
        out[side]["token_index"] = idx.reshape(out[side]["input_ids"].shape)
    return out


class PairTexts:
  """Batch of records -> {'anchor', 'positive': [batch] str[, 'negatives': [batch][k]
  str], 'instruction': the anchors' query instruction}: the texts a run's batch is made
  of, untokenised (what a peer library given the same pairs reads)."""

  def __init__(self, instruction=""):
    self.instruction = instruction

  def __call__(self, batch):
    instruction = self.instruction
    if not isinstance(instruction, str):
      instruction = instruction[int(batch.get("source", 0))]
    out = {side: [decode_text(t) for t in batch[side]] for side in ("anchor", "positive")}
    negatives = batch.get("negatives")
    if negatives is not None and len(negatives):
      columns = [[decode_text(t) for t in col] for col in negatives]
      out["negatives"] = [list(row) for row in zip(*columns)]
    out["instruction"] = instruction
    return out


def _pairs_map(tokenizer, seq_len, instruction, loss_weights, pack_length, pack_granule,
               teacher_tokenizer):
  """What turns a batch of records into the step's input: TokenizePairs, or with
  `tokenizer` None the texts alone (PairTexts)."""
  if tokenizer is None:
    return PairTexts(instruction)
  return TokenizePairs(tokenizer, seq_len, instruction, loss_weights, pack_length,
                       pack_granule, teacher_tokenizer)


class HostShard(grain.MapDataset):
  """This host's rows of each global batch of `parent`.

  Global batch b is parent[b * global_batch : (b + 1) * global_batch]; host i reads
  rows [i * per_host, (i + 1) * per_host) of it. Concatenated in process order (as
  `jax.make_array_from_process_local_data` assembles them), the hosts' batches are the
  global batch, so a run sees the same data whether it has 1 host or 64.
  """

  def __init__(self, parent: grain.MapDataset, global_batch: int, process_index: int,
               process_count: int):
    super().__init__(parent)
    self._global = global_batch
    self._per_host = global_batch // process_count
    self._offset = process_index * self._per_host

  def __len__(self):
    return (len(self._parent) // self._global) * self._per_host

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, self._per_host)
    return self._parent[batch * self._global + self._offset + row]


def pair_dataset(source, *, tokenizer: Tokenizer | None, batch_size: int, seq_len: int,
                 seed: int, process_index: int = 0, process_count: int = 1,
                 max_examples: int | None = None, split_name: str = "train",
                 num_threads: int = 2, workers: int = 0,
                 instruction: str = "", pack_length: int = 0,
                 pack_granule: int = 8, teacher_tokenizer: Tokenizer | None = None
                 ) -> grain.IterDataset:
  """An endless, per-epoch reshuffled stream of tokenised pair batches for this host
  (with `tokenizer` None, their texts: PairTexts).

  `batch_size` is the global batch; this host yields its `batch_size / process_count`
  rows of each global batch (see HostShard).
  """
  ds = grain.MapDataset.source(source)
  if max_examples is not None:
    ds = ds[:max_examples]
  if len(ds) == 0:
    raise DataError(f"data split {split_name!r} is empty"
                    + (f" (data.max_train_examples={max_examples})"
                       if max_examples is not None else "")
                    + "; it needs at least one batch of examples")
  if len(ds) < batch_size:
    raise DataError(f"data split {split_name!r} has {len(ds)} examples, fewer than one "
                    f"batch of {batch_size}; lower train.batch_size or raise "
                    "data.max_train_examples")
  _check_host_split(batch_size, process_count)
  ds = HostShard(ds.shuffle(seed=seed).repeat(None), batch_size, process_index,
                 process_count)
  ds = (ds.batch(batch_size // process_count, drop_remainder=True)
        .map(_pairs_map(tokenizer, seq_len, instruction, None, pack_length, pack_granule,
                        teacher_tokenizer)))
  return _to_iter(ds, num_threads, workers)


def _to_iter(ds: grain.MapDataset, num_threads: int, workers: int) -> grain.IterDataset:
  """Reading and tokenising in `workers` processes (0: threads of this one). The
  stream is the same either way; grain checkpoints each worker's position."""
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=4))
  if workers:
    if not flags.FLAGS.is_parsed():  # outside an absl app (a notebook, pytest) grain's
      flags.FLAGS.mark_as_parsed()   # workers read their flags' defaults
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers),
                        worker_init_fn=_exit_with_parent)
  return it


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
  """Runs in each grain worker process: a daemon thread ends the worker as soon as
  its parent is gone (a parent killed with SIGKILL cannot clean up its children)."""
  del worker_index, worker_count
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(0)
  threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _check_host_split(batch_size: int, process_count: int) -> None:
  if batch_size % process_count:
    raise DataError(f"train.batch_size={batch_size} does not divide over "
                    f"{process_count} processes")


def _num_negatives(source) -> int:
  negatives = source[0].get("negatives")
  return 0 if negatives is None else len(negatives)


def planned_dataset(sources, *, names, tokenizer: Tokenizer | None, batch_size: int,
                    seq_len: int, seed: int, weights=None, no_duplicates: bool = False,
                    process_index: int = 0, process_count: int = 1,
                    max_examples: int | None = None, num_threads: int = 2,
                    workers: int = 0, instruction="",
                    loss_weights=None, pack_length: int = 0,
                    pack_granule: int = 8,
                    teacher_tokenizer: Tokenizer | None = None) -> grain.IterDataset:
  """Batches planned by `batching.BatchPlan`: a weighted mixture of `sources` (each
  batch from one of them) and/or batches in which no text occurs twice. `instruction`:
  the query instruction, one string or one per source. `loss_weights`: None, or one
  (pair, teacher) pair of loss-term weights per source, carried by its batches.
  `tokenizer` None: the batches' texts instead (PairTexts).

  Deterministic in the seed; the checkpointed state is the batch number.
  """
  _check_host_split(batch_size, process_count)
  sizes, keys, negs = [], [], []
  for source, name in zip(sources, names):
    n = len(source) if max_examples is None else min(max_examples, len(source))
    if n < batch_size:
      raise DataError(f"data {name}: {n} examples, fewer than one batch of "
                      f"{batch_size}; lower train.batch_size or add data")
    sizes.append(n)
    negs.append(_num_negatives(source))
    if no_duplicates:
      keys.append([batching.text_keys([r["anchor"], r["positive"], *r.get("negatives", ())])
                   for r in as_numpy_records(source, limit=n)])
  if len(set(negs)) > 1:
    raise DataError("data.mixture: every dataset must have the same number of hard "
                    "negatives per example (the batch shape is fixed); got "
                    + ", ".join(f"{n}: {k}" for n, k in zip(names, negs)))
  plan = batching.BatchPlan(sizes, batch_size, seed, weights=weights,
                            keys=keys if no_duplicates else None)
  for k, name in enumerate(names):   # fails here, not mid-run, if one cannot pack
    try:
      plan.first_batch(k)
    except DataError as e:
      raise DataError(f"data {name}: {e}; data.no_duplicates needs more distinct "
                      "texts") from None
  ds = batching.PlannedBatches(sources, plan, batch_size, process_index, process_count,
                               negs[0]).map(_pairs_map(tokenizer, seq_len, instruction,
                                                       loss_weights, pack_length,
                                                       pack_granule, teacher_tokenizer))
  return _to_iter(ds, num_threads, workers)


def as_numpy_records(source, limit: int | None = None,
                     chunk: int = 8192) -> list[dict[str, str]]:
  """All records (or the first `limit`) as dicts of str, read in batches (one read per
  record is ~20x slower on array_record)."""
  n = len(source) if limit is None else min(limit, len(source))
  out = []
  for start in range(0, n, chunk):
    idx = list(range(start, min(start + chunk, n)))
    rows = source.__getitems__(idx) if hasattr(source, "__getitems__") else [
        source[i] for i in idx]
    out += [{k: _decode(v) for k, v in r.items()} for r in rows]
  return out


def text_fields(source, fields=("anchor", "positive"), limit: int | None = None
                ) -> list[str]:
  """Every text in `fields` of every record of `source` (of its first `limit` records),
  in record order (field by field within a record). A tfds array_record source whose
  fields are all Text features is read as raw tf.train.Example bytes and parsed with
  protobuf, faster than tfds' per-record numpy deserialisation (benchmarks/README.md);
  any other source goes through `as_numpy_records`."""
  raw_source = getattr(source, "data_source", None)
  features = getattr(getattr(source, "dataset_info", None), "features", None)
  if (raw_source is None or features is None or not hasattr(raw_source, "__getitems__")
      or not all(f in features and isinstance(features[f], tfds.features.Text)
                 for f in fields)):
    return [r[f] for r in as_numpy_records(source, limit) for f in fields]
  # A built tfds split never changes in place (a rebuild is a new version folder), so one
  # read serves every run of a process (a study's runs share their training data).
  n = len(source) if limit is None else min(limit, len(source))
  key = (str(source.dataset_info.data_dir), str(source.split), tuple(fields), n)
  if key not in _TEXT_FIELDS:
    parse = tf_example_generated_pb2.Example.FromString
    out, chunk = [], 8192
    for start in range(0, n, chunk):
      for record in raw_source.__getitems__(list(range(start, min(start + chunk, n)))):
        feature = parse(record).features.feature
        out += [decode_text(feature[f].bytes_list.value[0]) for f in fields]
    _TEXT_FIELDS[key] = tuple(out)
  return list(_TEXT_FIELDS[key])


_TEXT_FIELDS: dict = {}


def _decode(value):
  if isinstance(value, (bytes, str)):
    return decode_text(value)
  if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) == 1:
    return [decode_text(v) for v in value]  # a sequence of texts (hard negatives)
  return value                              # a label




class ImageCaptions:
  """Fashion-MNIST records -> {'anchor': {'pixels'}, 'positive': caption tokens,
  'group': the class label}; the caption of record i is template (i mod 5) filled with
  its class name. Pairs of one group are each other's positives for the objectives
  that read groups (a class's captions are interchangeable)."""

  def __init__(self, tokenizer: Tokenizer, seq_len: int, class_names):
    self.tokenizer, self.seq_len = tokenizer, seq_len
    self.class_names = [n.lower() for n in class_names]

  def caption(self, label: int, index: int) -> str:
    return CAPTION_TEMPLATES[index % len(CAPTION_TEMPLATES)].format(self.class_names[label])

  def __call__(self, records, rows):
    pixels = np.stack([r["image"] for r in records]).astype(np.float32) / 255.0
    texts = [self.caption(int(r["label"]), i) for r, i in zip(records, rows)]
    return {"anchor": {"pixels": pixels},
            "positive": self.tokenizer.encode(texts, pad_to=self.seq_len),
            "group": np.asarray([int(r["label"]) for r in records], np.int32)}


def image_caption_dataset(source, *, tokenizer: Tokenizer, class_names, batch_size: int,
                          seq_len: int, seed: int, process_index: int = 0,
                          process_count: int = 1, max_examples: int | None = None,
                          num_threads: int = 2, workers: int = 0,
                          distinct_classes: bool = True) -> grain.IterDataset:
  """(image, caption) batches for two-tower training. distinct_classes: no class twice
  in a batch (its caption would be a false negative for an objective that knows only
  the pair's own caption): batches are planned with the label as the only 'text' of
  each record, so batch_size <= the number of classes. Without it batches are
  uniform draws, any size, and classes repeat: train them with an objective that reads
  the batch's 'group' (loss.name='multi_positive_info_nce' or 'sigmoid')."""
  n = len(source) if max_examples is None else min(max_examples, len(source))
  classes = len(class_names)
  if distinct_classes and batch_size > classes:
    raise DataError(f"train.batch_size={batch_size}: image-caption batches hold each of "
                    f"the {classes} classes at most once (a repeated caption is a false "
                    f"negative); use a batch of at most {classes}, or "
                    "data.distinct_classes=False with an objective that reads classes")
  _check_host_split(batch_size, process_count)
  keys = None
  if distinct_classes:      # plan with each record's label as its only 'text'
    labels = np.concatenate([[int(r["label"]) for r in source.__getitems__(
        list(range(s, min(s + 8192, n))))] for s in range(0, n, 8192)])
    keys = [batching.text_keys([str(int(l))]) for l in labels]
  plan = batching.BatchPlan([n], batch_size, seed, keys=[keys])
  plan.first_batch(0)
  ds = batching.PlannedBatches([source], plan, batch_size, process_index, process_count,
                               collate_fn=ImageCaptions(tokenizer, seq_len, class_names))
  return _to_iter(ds, num_threads, workers)


class _ImagesAndLabels:
  """A batch of {'image' uint8 [b, H, W, C], 'label'} -> {'pixels' float32 in [0, 1],
  'label' int32}."""

  def __call__(self, batch):
    return {"pixels": np.asarray(batch["image"], np.float32) / 255.0,
            "label": np.asarray(batch["label"], np.int32)}


def labelled_image_dataset(source, *, batch_size: int, seed: int, process_index: int = 0,
                           process_count: int = 1, max_examples: int | None = None,
                           num_threads: int = 2, workers: int = 0) -> grain.IterDataset:
  """An endless, per-epoch reshuffled stream of labelled image batches for this host
  (supervised classification); the global batch is split over hosts as in
  `pair_dataset`."""
  ds = grain.MapDataset.source(source)
  if max_examples is not None:
    ds = ds[:max_examples]
  if len(ds) < batch_size:
    raise DataError(f"{len(ds)} labelled images, fewer than one batch of {batch_size}")
  _check_host_split(batch_size, process_count)
  ds = HostShard(ds.shuffle(seed=seed).repeat(None), batch_size, process_index,
                 process_count)
  ds = ds.batch(batch_size // process_count, drop_remainder=True).map(_ImagesAndLabels())
  return _to_iter(ds, num_threads, workers)


def labelled_images(source, limit: int | None = None, chunk: int = 4096):
  """(pixels float32 [n, H, W, C] in [0, 1], labels int32 [n]) of a whole split, in
  order: the features a probe is fitted on."""
  n = len(source) if limit is None else min(limit, len(source))
  parts = [_ImagesAndLabels()({
      k: np.stack([r[k] for r in rows]) for k in ("image", "label")})
      for rows in (source.__getitems__(list(range(s, min(s + chunk, n))))
                   for s in range(0, n, chunk))]
  return (np.concatenate([p["pixels"] for p in parts]),
          np.concatenate([p["label"] for p in parts]))
