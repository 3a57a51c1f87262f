"""Everything a run needs, built and checked before anything is written.

Everything a run can get wrong from its inputs (config fields, model folder, WordNet
files, empty splits, mesh sizes) is checked in `setup` before the workdir is touched,
so a bad run leaves nothing behind that would break the next one.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import ml_collections
import optax

from jaxembed import compilation_cache, defaults, loaders
from jaxembed import sharding as shd
from jaxembed.data.tokenizer import Tokenizer
from jaxembed.errors import ConfigError, ModelLoadError
from jaxembed.losses import build_cells
from jaxembed.losses import registry
from jaxembed.losses.registry import deepest_layer, distill_settings, init_loss_params, make_loss
from jaxembed.models import ModelSpec, abstract_params, build, lora, read_model_folder
from jaxembed.models.build import abstract_boxed_params
from jaxembed.models.embedder import CENTER, COMPONENTS
from jaxembed.train import anchor_map, centring, inputs, sources
from jaxembed.train.optim import make_optimizer, trainable_mask
from jaxembed.train.state import initial_params
from jaxembed.train.step import Forward, OtherTeacher, ParamView
from jaxembed.workdir import Workdir


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  workdir: Workdir
  folder: Any                # the pretrained model folder (models.loading.ModelFolder)
  model: Any                 # implements the embedder interface (models/embedder.py)
  spec: ModelSpec            # what the workdir records of the model
  mesh: jax.sharding.Mesh
  rules: tuple
  tokenizer: Tokenizer
  eval_tokenizer: Tokenizer
  tx: optax.GradientTransformation
  schedule: Any
  loss_fn: Any
  dataset: Any               # grain IterDataset (per host)
  eval_tasks: list
  param_shardings: Any
  loss_params: dict          # the objective's own initial parameters ({} if none)
  view: ParamView = ParamView()  # freezing (optim.trainable) and LoRA (optim.lora)
  train_depth: int = 0       # blocks the train step computes (< the model's: early exit)
  # (run, params) -> params, each in turn on the trained model after the last step,
  # before its checkpoint: e.g. the exits' statistics re-estimated
  # (model.refresh_exits_at_end). The loop calls them without knowing what they do.
  end_hooks: tuple = ()
  # loss.distill.teacher: the frozen teacher when it is another model (its sub-model
  # and width), and that model (jaxembed.api.EmbeddingModel); None: the student's own.
  other_teacher: OtherTeacher | None = None
  teacher_model: Any = None
  centring_texts: tuple = ()  # model.centred_exits: the texts whose layer means centre
  # loss.distill.anchor_map: the training texts its map is fitted on, and the map
  # (train/anchor_map.py) once fitted or read back from the workdir.
  anchor_texts: tuple = ()
  anchor_map: Any = None

  @property
  def train_model(self):
    """The model the train step runs: the full one, or, when the loss reads only layers
    up to `train_depth` (e.g. a separately trained shallow sub-model), the same model
    computing only those blocks (same parameters; the deeper ones get no gradient)."""
    if self.train_depth and self.train_depth < self.model.output_layers:
      return self.model.up_to(self.train_depth)
    return self.model

  @property
  def forward(self) -> Forward:
    """The train step's forward pass and gradient (`step.Forward`)."""
    return Forward(self.train_model, self.view,
                   deterministic=not self.config.train.dropout,
                   grad_cache_minibatch=self.config.train.grad_cache_minibatch)

  @property
  def text_config(self):
    return self.model.text_config

  @property
  def distill(self) -> bool:
    """Whether the objective learns from the frozen pretrained model (loss.distill)."""
    return distill_settings(self.config.loss) is not None

  def as_published(self, params):
    """The starting model as its folder gives it, for the grid "before": without the
    exits' statistics that model.centred_exits adds (a no-op without them)."""
    return centring.without_exit_statistics(self, params)

  def teacher_params(self):
    """The frozen teacher: the pretrained weights, freshly loaded (on a resume too),
    laid out like the student's; or another model's (loss.distill.teacher),
    replicated on every device."""
    if self.teacher_model is not None:
      params = self.teacher_model.params
      if self.other_teacher.mapped:
        if self.anchor_map is None:
          self.anchor_map = anchor_map.fitted(self, lambda: initial_params(self))
        params = {"model": params, "anchor_map": self.anchor_map}
      return shd.host_to_global(params, shd.replicated(self.mesh))
    return {k: v for k, v in initial_params(self).items() if k not in ("loss", lora.GROUP)}


def load_other_teacher(config, model):
  """(OtherTeacher, its EmbeddingModel) when loss.distill.teacher names a model, else
  (None, None). The anchor term compares the student's full vectors with the
  teacher's, so it needs one width, or the teacher mapped into the student's space
  (loss.distill.anchor_map); the KL compares in-batch similarities and needs
  none."""
  kd = distill_settings(config.loss)
  path = kd.get("teacher", "") if kd is not None else ""
  if not path:
    return None, None
  try:
    teacher = loaders.load(path)
  except ModelLoadError as e:
    raise ModelLoadError(f"loss.distill.teacher: {e}") from e
  if teacher.multivector:
    raise ConfigError(f"loss.distill.teacher={path!r} is a multi-vector model; the "
                      "teacher terms need one vector per text")
  layer = teacher.default_layer or teacher.num_layers
  dim = teacher.default_dim or teacher.hidden_size          # as `encode` gives them
  mapped = bool(kd.anchor_weight and kd.get("anchor_map", ""))
  if kd.anchor_weight and not mapped and dim != model.output_width:
    raise ConfigError(f"loss.distill.anchor_weight={kd.anchor_weight}: the anchor needs "
                      f"the teacher's width, and loss.distill.teacher={path!r} gives "
                      f"{dim} dims against the student's {model.output_width}; set "
                      "loss.distill.anchor_map='procrustes' (a fixed map into the "
                      "student's space) or loss.distill.anchor_weight=0 (the KL terms "
                      "need no common width)")
  module = teacher.module.clone(layers=(layer,), early_exit=True)
  logging.info("loss.distill.teacher: %s, layer %d, %d dims%s", path, layer, dim,
               f"; the anchor through a {kd.anchor_map} map" if mapped else "")
  return OtherTeacher(module, dim, mapped), teacher


def check_distill_config(config, model) -> None:
  """loss.distill's teacher is the pretrained model as loaded (unless loss.distill.
  teacher names another): it needs pretrained weights and a model that is nothing but
  them (no randomly initialised pooler or tower, which would make a random teacher)."""
  kd = distill_settings(config.loss)
  if kd is None or kd.get("teacher", ""):
    return
  if config.model.init != "pretrained":
    logging.warning("loss.distill with model.init=%r: the teacher is the model's random "
                    "initial weights (useful for tests only)", config.model.init)
  # The centred exits' means are data statistics, not random parameters.
  extra = sorted(set(abstract_boxed_params(model)) - {"encoder", CENTER, COMPONENTS})
  if config.model.encoder == "two_tower" or extra:
    raise ConfigError(
        f"loss.distill: the teacher would include randomly initialised parameters "
        f"({extra or 'two_tower'}); use a parameter-free model.pooling (cls, mean, "
        f"weighted_mean, max, last_token), not model.pooling={config.model.pooling!r}"
        f" with model.encoder={config.model.encoder!r}")


def check_train_config(config: ml_collections.ConfigDict, model, mesh) -> None:
  steps, batch = config.train.steps, config.train.batch_size
  if config.train.eval_every < 0:
    raise ConfigError(f"train.eval_every={config.train.eval_every} must be >= 0 "
                      "(0: evaluate only before and after training)")
  if steps < 1 or batch < 1:
    raise ConfigError(f"train.steps={steps} and train.batch_size={batch} must be >= 1")
  if batch < 2:
    raise ConfigError("train.batch_size=1: with one pair a batch has no negatives, so "
                      "the loss is 0 and nothing trains; use 2 or more")
  for field, minimum in (("train.log_every", 1), ("train.checkpoint_every", 1),
                         ("train.keep_checkpoints", 1), ("data.seq_len", 2),
                         ("eval.batch_size", 1), ("eval.max_length", 2),
                         ("eval.ood_queries", 0)):
    section, name = field.split(".")
    value = config[section][name]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
      why = (" (0 would delete every checkpoint)" if name == "keep_checkpoints" else "")
      raise ConfigError(f"{field}={value!r} must be an integer >= {minimum}{why}")
  n_batch_shards = shd.batch_shards(mesh)
  if batch % n_batch_shards or batch % jax.process_count():
    raise ConfigError(f"train.batch_size={batch} must divide by the data-parallel "
                      f"size dcn_data*data*fsdp={n_batch_shards} and by the "
                      f"{jax.process_count()} processes")
  check_scored(config)
  check_grouped(config)
  check_multivector(config, model)
  check_packing(config, model, n_batch_shards)
  mini = config.train.grad_cache_minibatch
  if mini and (batch % mini or mini % n_batch_shards):
    raise ConfigError(f"train.grad_cache_minibatch={mini} must divide train.batch_size="
                      f"{batch} and be a multiple of the {n_batch_shards} batch shards")
  if mini and not model.supports_grad_cache:
    raise ConfigError(f"train.grad_cache_minibatch is not supported with "
                      f"model.encoder={config.model.encoder!r}; set it to 0")


def check_packing(config, model, n_batch_shards: int) -> None:
  """data.pack_length: what packed batches need (see data/packing.py)."""
  d = config.data
  length, granule = d.pack_length, d.pack_granule
  for field, value in (("data.pack_length", length), ("data.pack_granule", granule)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ConfigError(f"{field}={value!r} must be an integer >= 0")
  if not length:
    return
  if length < d.seq_len:
    raise ConfigError(f"data.pack_length={length} must be at least data.seq_len="
                      f"{d.seq_len} (a row holds at least one whole text)")
  if granule < 1 or granule % n_batch_shards:
    raise ConfigError(f"data.pack_granule={granule} must be a positive multiple of the "
                      f"data-parallel size {n_batch_shards} (the packed rows are split "
                      "over it)")
  why = None
  if not model.supports_packing:
    why = f"model.encoder={config.model.encoder!r} (BERT encoders only)"
  elif d.padding_side != "right":
    why = f"data.padding_side={d.padding_side!r} (right only)"
  elif config.train.grad_cache_minibatch:
    why = "train.grad_cache_minibatch (it splits the batch by texts, not rows)"
  elif jax.process_count() > 1:
    why = f"{jax.process_count()} processes (each would pack only its own rows)"
  if why:
    raise ConfigError(f"data.pack_length={length} does not go with {why}; set "
                      "data.pack_length=0")


def check_scored(config) -> None:
  """Graded pairs and the ranking objectives go together: a scored file's grades would
  be ignored by a pair loss, and a ranking loss has nothing to rank without them."""
  scored_loss = config.loss.name in registry.scored_names()
  single = sources.unmixed(config.data)
  scored_data = single is not None and single.graded
  if scored_loss and not scored_data:
    raise ConfigError(f"loss.name={config.loss.name!r} ranks graded pairs: set "
                      "data.source='scored_file' and data.train_file to a file with "
                      "sentence1, sentence2, score (no data.mixture)")
  if scored_data and not scored_loss:
    raise ConfigError(f"data.source='scored_file' gives graded pairs; loss.name="
                      f"{config.loss.name!r} would ignore the grades: use one of "
                      f"{list(registry.scored_names())}")


def check_multivector(config, model) -> None:
  """A multi-vector model's token matrices need an objective that scores them, and
  only a multi-vector model gives them; GradCache and teachers pool vectors."""
  scores_tokens = config.loss.name in registry.multivector_names()
  if model.multivector != scores_tokens:
    raise ConfigError(
        f"loss.name={config.loss.name!r} with model.multivector.dim="
        f"{config.model.multivector.dim}: token vectors (dim > 0) are trained with "
        f"loss.name in {list(registry.multivector_names())}, pooled vectors (dim 0) with "
        "the others")
  if scores_tokens and config.train.grad_cache_minibatch:
    raise ConfigError("train.grad_cache_minibatch caches pooled vectors; a multi-vector "
                      "model trains without it")


def check_grouped(config) -> None:
  """Batches that repeat a class need an objective that reads the classes."""
  single = sources.unmixed(config.data)
  if single is not None and single.repeats_classes(config.data):
    if config.loss.name not in registry.grouped_names():
      raise ConfigError(f"data.distinct_classes=False puts a class's captions in a batch "
                        f"more than once; loss.name={config.loss.name!r} would count them "
                        f"as negatives: use one of {list(registry.grouped_names())}")


def setup(config: ml_collections.ConfigDict, workdir: str, devices=None) -> Run:
  """Checks the config and builds everything the run needs; writes nothing.

  `devices` (default: all) are the devices the mesh is laid over. Turns on the
  persistent compilation cache (`jaxembed.compilation_cache`)."""
  compilation_cache.enable()
  defaults.migrate(config)
  defaults.check_fields(config)
  build.check_model_config(config)
  folder = read_model_folder(config.model.path, tokenizer=config.model.tokenizer)
  text_config = build.text_encoder_config(config, folder)
  prompts = {name: text for name, text in folder.prompts if text}
  if prompts and config.data.query_instruction not in prompts.values():
    # A trained model keeps the instruction it trained with, not the folder's prompts.
    logging.warning("model.path=%r has prompts %s that this run does not train with "
                    "(data.query_instruction=%r); the trained model will not have them. "
                    "To train as the model is used, set data.query_instruction to its "
                    "query prompt", config.model.path, prompts,
                    config.data.query_instruction)
  model = build.build_model(config, text_config, folder)
  build_cells("grid", num_layers=model.output_layers, hidden=model.output_width,
              layers=config.eval.layers, dims=config.eval.dims, field="eval")
  mesh = shd.make_mesh(dict(config.mesh), devices)
  check_train_config(config, model, mesh)
  check_distill_config(config, model)
  rules = shd.rules_from_config(config.sharding.rules)
  loss_fn = make_loss(config.loss, num_layers=model.output_layers,
                      hidden=model.output_width, mesh=mesh)
  loss_params = init_loss_params(config.loss)
  train_depth = 0
  if model.supports_early_exit:
    train_depth = deepest_layer(config.loss, num_layers=model.output_layers,
                                hidden=model.output_width)
  param_shardings = shd.param_shardings(abstract_boxed_params(model), mesh, rules)
  if loss_params:
    param_shardings = dict(param_shardings,
                           loss={k: shd.replicated(mesh) for k in loss_params})
  lora_cfg = config.optim.lora
  lora.check(lora_cfg)
  if float(lora_cfg.dropout) and text_config.scan_layers:
    raise ConfigError("optim.lora.dropout acts on each layer's activations, which a "
                      "scanned stack does not expose: set model.decoder.scan_layers=False")
  shapes = abstract_params(model, loss_params, lora_cfg)
  trainable, lora_scale = None, 0.0
  if int(lora_cfg.rank) > 0:
    # The factors are small: every device holds them whole.
    param_shardings = dict(param_shardings, **{lora.GROUP: jax.tree.map(
        lambda _: shd.replicated(mesh), shapes[lora.GROUP])})
    trainable = trainable_mask(shapes, tuple(config.optim.trainable) + (f"^{lora.GROUP}/",))
    lora_scale = lora.scale(lora_cfg)
  elif config.optim.trainable:
    trainable = trainable_mask(shapes, config.optim.trainable)
  if CENTER in shapes:
    # The centred exits' means (and directions) are statistics of the model's vectors
    # (train/centring.py), never trained.
    if trainable is None:
      trainable = jax.tree.map(lambda _: True, shapes)
    trainable = dict(trainable, **{name: False for name in (CENTER, COMPONENTS)
                                   if name in shapes})
  tx, schedule = make_optimizer(config.optim, config.train.steps, trainable)
  view = ParamView(trainable, lora_scale, float(lora_cfg.dropout))

  if config.data.seq_len > text_config.max_position_embeddings:
    raise ConfigError(f"data.seq_len={config.data.seq_len} exceeds the model's "
                      f"{text_config.max_position_embeddings} positions")
  tokenizer = Tokenizer(folder.tokenizer, config.data.seq_len, config.data.padding_side)
  eval_tokenizer = Tokenizer(folder.tokenizer,
                             min(config.eval.max_length, text_config.max_position_embeddings),
                             config.data.padding_side)
  other_teacher, teacher_model = load_other_teacher(config, model)
  dataset, eval_tasks, centring_texts, anchor_texts = inputs.make_inputs(
      config, model, tokenizer,
      teacher_tokenizer=teacher_model.tokenizer if teacher_model is not None else None,
      anchor_texts=(config.loss.distill.anchor_map_texts
                    if other_teacher is not None and other_teacher.mapped else 0))
  return Run(config=config, workdir=Workdir(workdir), folder=folder, model=model,
             spec=build.run_spec(config, model), mesh=mesh, rules=rules,
             tokenizer=tokenizer, eval_tokenizer=eval_tokenizer, tx=tx,
             schedule=schedule, loss_fn=loss_fn, dataset=dataset, eval_tasks=eval_tasks,
             param_shardings=param_shardings, loss_params=loss_params, view=view,
             train_depth=train_depth, end_hooks=(
                 (centring.with_exit_centres,) if config.model.refresh_exits_at_end else ()),
             centring_texts=tuple(centring_texts), other_teacher=other_teacher,
             teacher_model=teacher_model, anchor_texts=tuple(anchor_texts))
