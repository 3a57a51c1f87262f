"""The training job: validate everything, build the sharded state, train, evaluate.

Everything a run can get wrong from its inputs (config fields, model folder, WordNet
files, empty splits, mesh sizes) is checked in `setup` before the workdir is touched,
so a bad run leaves nothing behind that would break the next one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import signal
import threading
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxembed import sharding as shd
from jaxembed.api import EmbeddingModel
from jaxembed.checkpoint import Checkpointer
from jaxembed.data.tokenizer import Tokenizer
from jaxembed.errors import ConfigError
from jaxembed.evals import grid as grid_eval
from jaxembed.losses import build_cells
from jaxembed.losses.registry import init_loss_params, make_loss
from jaxembed.models import DecoderConfig, Embedder, load_encoder_weights, read_model_folder
from jaxembed.models.bert import BertConfig
from jaxembed.models.pooling import TRAINABLE, check_pooling
from jaxembed.models.two_tower import TOWERS, TwoTower
from jaxembed.models.two_tower import dummy_inputs as two_tower_inputs
from jaxembed.models.vit import ViTConfig
from jaxembed.train import inputs
from jaxembed.train.optim import make_optimizer
from jaxembed.train.state import TrainState
from jaxembed.train.step import train_step
from jaxembed.train.summary import MetricWriter
from jaxembed.train.workdir import Workdir

# ----------------------------------------------------------------------------- config

def check_fields(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict,
                 prefix: str = "") -> None:
  """Every field of `config` must exist in `schema` (a misspelt field would otherwise
  be silently ignored)."""
  for key in config.keys():
    name = f"{prefix}{key}"
    if key not in schema:
      raise ConfigError(f"unknown config field {name!r}; valid fields"
                        f"{' in ' + prefix.rstrip('.') if prefix else ''}: "
                        f"{sorted(schema.keys())}")
    if isinstance(schema[key], ml_collections.ConfigDict) and key != "bert_overrides":
      check_fields(config[key], schema[key], name + ".")


ENCODERS = ("bert", "decoder", "two_tower")


def bert_config(config, folder):
  """The (text) encoder's config: BERT from the model folder (+ model.bert_overrides),
  or the decoder LLM from a Llama/Qwen2 folder or, with model.init=random, from
  model.decoder on the folder's vocabulary. For model.encoder='two_tower', the text
  tower's (model.two_tower.text_encoder)."""
  kind = config.model.encoder
  if kind not in ENCODERS:
    raise ConfigError(f"model.encoder={kind!r}; valid values: {list(ENCODERS)}")
  if kind == "two_tower":
    kind = config.model.two_tower.text_encoder
    if kind not in ("bert", "decoder"):
      raise ConfigError(f"model.two_tower.text_encoder={kind!r}; valid values: "
                        "['bert', 'decoder']")
  if kind == "decoder":
    return decoder_config(config, folder)
  if not isinstance(folder.bert, BertConfig):
    raise ConfigError(f"model.encoder='bert' but model.path={config.model.path!r} holds a "
                      f"{type(folder.bert).__name__}; set model.encoder='decoder'")
  overrides = dict(config.model.bert_overrides)
  valid = {f.name for f in dataclasses.fields(BertConfig)}
  bad = sorted(set(overrides) - valid)
  if bad:
    raise ConfigError(f"model.bert_overrides: unknown fields {bad}; valid: {sorted(valid)}")
  base = dataclasses.asdict(folder.bert)
  if not config.train.dropout:
    overrides.update(hidden_dropout=0.0, attention_dropout=0.0)
  return BertConfig(**{**base, **overrides})


# Settings of model.decoder that apply to a pretrained decoder too (the shapes come
# from its config.json).
_DECODER_RUNTIME = ("attention", "scan_layers", "remat", "dtype", "hidden_dropout",
                    "attention_dropout")


def decoder_config(config, folder) -> DecoderConfig:
  d = dict(config.model.decoder)
  if not config.train.dropout:
    d.update(hidden_dropout=0.0, attention_dropout=0.0)
  if isinstance(folder.bert, DecoderConfig):
    return DecoderConfig(**{**dataclasses.asdict(folder.bert),
                            **{k: d[k] for k in _DECODER_RUNTIME}})
  if config.model.init == "pretrained":
    raise ConfigError(f"model.encoder='decoder' with model.init='pretrained' needs a "
                      f"Llama/Qwen2/Mistral folder; model.path={config.model.path!r} holds "
                      "a BERT. Use model.init='random' to train a decoder from scratch on "
                      "its tokenizer")
  return DecoderConfig(**{**d, "vocab_size": folder.bert.vocab_size,
                          "max_position_embeddings": max(d["max_position_embeddings"],
                                                         config.data.seq_len)})


def make_embedder(bert, config):
  """The model a run trains: an Embedder over `bert` (the text encoder config), or a
  TwoTower when model.encoder='two_tower'."""
  m = config.model
  if m.encoder != "two_tower":
    return Embedder(bert, pooling=m.pooling, pool_heads=m.pool_heads,
                    pool_latents=m.pool_latents)
  t = m.two_tower
  if t.towers not in TOWERS:
    raise ConfigError(f"model.two_tower.towers={t.towers!r}; valid values: {list(TOWERS)}")
  check_pooling(t.image_pooling, "model.two_tower.image_pooling")
  image = ViTConfig(**dict(m.vit)) if t.towers == "image_text" else None
  return TwoTower(t.towers, text=bert, image=image, shared=t.shared,
                  image_pooling=t.image_pooling, text_pooling=m.pooling,
                  embed_dim=t.embed_dim, pool_heads=m.pool_heads, pool_latents=m.pool_latents)


def output_shape(model, bert) -> tuple[int, int]:
  """(layers, width) of what the objectives and the grid see."""
  if isinstance(model, TwoTower):
    return 1, model.embed_dim
  return bert.num_layers, bert.hidden_size


def init_inputs(model):
  if isinstance(model, TwoTower):
    return two_tower_inputs(model)
  ids = jnp.zeros((1, 8), jnp.int32)
  return ids, jnp.ones_like(ids)


def abstract_params(bert, config, loss_params=None):
  """Shapes of the parameter tree (no memory), unboxed: {'encoder': ...}, 'pooler'
  for a trainable pooling and, if the objective has parameters of its own, 'loss'."""
  shapes = nn.unbox(_abstract_boxed(bert, config))
  if loss_params:
    shapes = dict(shapes, loss=jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), loss_params))
  return shapes


def _abstract_boxed(bert, config):
  model = make_embedder(bert, config)
  inputs = init_inputs(model)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))["params"]


# ----------------------------------------------------------------------------- setup

@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  workdir: Workdir
  folder: Any
  bert: Any                  # BertConfig | DecoderConfig
  model: Embedder
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


def setup(config: ml_collections.ConfigDict, workdir: str, devices=None) -> Run:
  """Checks the config and builds everything the run needs; writes nothing.

  `devices` (default: all) are the devices the mesh is laid over."""
  from configs.common import base_config
  check_fields(config, base_config())
  if config.model.init not in ("pretrained", "random"):
    raise ConfigError(f"model.init={config.model.init!r}; valid: ['pretrained', 'random']")
  check_pooling(config.model.pooling)
  folder = read_model_folder(config.model.path, tokenizer=config.model.tokenizer)
  bert = bert_config(config, folder)
  if config.model.pooling in TRAINABLE and bert.hidden_size % config.model.pool_heads:
    raise ConfigError(f"model.pool_heads={config.model.pool_heads} must divide the hidden "
                      f"size {bert.hidden_size} (model.pooling={config.model.pooling!r})")
  if config.data.padding_side not in ("right", "left"):
    raise ConfigError(f"data.padding_side={config.data.padding_side!r}; valid values: "
                      "['right', 'left']")
  if config.data.padding_side == "left" and config.model.pooling == "cls":
    raise ConfigError("model.pooling='cls' reads position 0, which is padding under "
                      "data.padding_side='left'; use 'last_token' or pad on the right")
  model = make_embedder(bert, config)
  out_layers, out_width = output_shape(model, bert)
  build_cells("grid", num_layers=out_layers, hidden=out_width,
              layers=config.eval.layers, dims=config.eval.dims, field="eval")

  steps, batch = config.train.steps, config.train.batch_size
  if config.train.eval_every < 0:
    raise ConfigError(f"train.eval_every={config.train.eval_every} must be >= 0 "
                      "(0: evaluate only before and after training)")
  if steps < 1 or batch < 1:
    raise ConfigError(f"train.steps={steps} and train.batch_size={batch} must be >= 1")
  mesh = shd.make_mesh(dict(config.mesh), devices)
  n_batch_shards = shd.batch_shards(mesh)
  if batch % n_batch_shards or batch % jax.process_count():
    raise ConfigError(f"train.batch_size={batch} must divide by the data-parallel "
                      f"size dcn_data*data*fsdp={n_batch_shards} and by the "
                      f"{jax.process_count()} processes")
  mini = config.train.grad_cache_minibatch
  if mini and (batch % mini or mini % n_batch_shards):
    raise ConfigError(f"train.grad_cache_minibatch={mini} must divide train.batch_size="
                      f"{batch} and be a multiple of the {n_batch_shards} batch shards")
  rules = shd.rules_from_config(config.sharding.rules)
  loss_fn = make_loss(config.loss, num_layers=out_layers, hidden=out_width, mesh=mesh)
  loss_params = init_loss_params(config.loss)
  if isinstance(model, TwoTower) and config.train.grad_cache_minibatch:
    raise ConfigError("train.grad_cache_minibatch is not supported with "
                      "model.encoder='two_tower'; set it to 0")
  param_shardings = shd.param_shardings(_abstract_boxed(bert, config), mesh, rules)
  if loss_params:
    param_shardings = dict(param_shardings,
                           loss={k: shd.replicated(mesh) for k in loss_params})
  tx, schedule = make_optimizer(config.optim, steps)

  if config.data.seq_len > bert.max_position_embeddings:
    raise ConfigError(f"data.seq_len={config.data.seq_len} exceeds the model's "
                      f"{bert.max_position_embeddings} positions")
  tokenizer = Tokenizer(folder.tokenizer, config.data.seq_len, config.data.padding_side)
  eval_tokenizer = Tokenizer(folder.tokenizer,
                             min(config.eval.max_length, bert.max_position_embeddings),
                             config.data.padding_side)
  dataset, eval_tasks = inputs.make_inputs(config, model, tokenizer)
  return Run(config=config, workdir=Workdir(workdir), folder=folder, bert=bert,
             model=model, mesh=mesh, rules=rules, tokenizer=tokenizer,
             eval_tokenizer=eval_tokenizer, tx=tx, schedule=schedule, loss_fn=loss_fn,
             dataset=dataset, eval_tasks=eval_tasks, param_shardings=param_shardings,
             loss_params=loss_params)


# ----------------------------------------------------------------------------- state

def mesh_context(run: Run):
  """Enter the mesh and the logical-axis rules around every traced function."""
  stack = contextlib.ExitStack()
  stack.enter_context(jax.set_mesh(run.mesh))
  stack.enter_context(nn.logical_axis_rules(run.rules))
  return stack


def state_shardings(run: Run, abstract_opt_state) -> TrainState:
  rep = shd.replicated(run.mesh)
  opt = optax.tree_map_params(run.tx, lambda _, s: s, abstract_opt_state,
                              run.param_shardings,
                              transform_non_params=lambda _: rep)
  return TrainState(step=rep, params=run.param_shardings, opt_state=opt, rng=rep)


def _put_global(tree, shardings):
  """Host numpy arrays -> global arrays, each device taking only its own slice."""
  return jax.tree.map(
      lambda a, s: jax.make_array_from_callback(a.shape, s, lambda idx: a[idx]),
      tree, shardings)


def initial_params(run: Run):
  """Pretrained weights placed straight into their shards, or a jitted random init
  whose outputs are born sharded (a trainable pooler on a pretrained encoder, and a
  two-tower model's towers, are initialised at random, then the pretrained text
  encoder replaces its part)."""
  shardings = {k: v for k, v in run.param_shardings.items() if k != "loss"}
  pretrained = run.config.model.init == "pretrained"
  if isinstance(run.model, TwoTower):
    params = _random_init(run, shardings)
    if pretrained:
      loaded = load_encoder_weights(run.folder.weights, run.bert)["encoder"]
      text_towers = ["text_tower"] + (["anchor_tower"] if "anchor_tower" in params
                                      and run.model.towers == "text_text" else [])
      for tower in text_towers:
        params[tower] = dict(params[tower],
                             encoder=_put_global(loaded, shardings[tower]["encoder"]))
  elif pretrained:
    params = _put_global(load_encoder_weights(run.folder.weights, run.bert),
                         {"encoder": shardings["encoder"]})
    if "pooler" in shardings:
      params["pooler"] = _random_init(run, shardings["pooler"], part="pooler")
  else:
    params = _random_init(run, shardings)
  if run.loss_params:
    params = dict(params, loss=_put_global(run.loss_params, run.param_shardings["loss"]))
  return params


def _random_init(run: Run, shardings, part: str | None = None):
  """The model's random initial parameters (or their `part` subtree), jitted with
  `out_shardings` so that each device creates only its own shard."""
  inputs = init_inputs(run.model)

  def init(rng):
    params = nn.unbox(run.model.init(rng, *inputs))["params"]
    return params[part] if part else params
  with mesh_context(run):
    return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(run.config.seed))


def abstract_state(run: Run):
  shapes = abstract_params(run.bert, run.config, run.loss_params)
  opt_shapes = jax.eval_shape(run.tx.init, shapes)
  shardings = state_shardings(run, opt_shapes)
  shapes_state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=shapes,
                            opt_state=opt_shapes,
                            rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes_state, shardings), shardings


def new_state(run: Run, shardings: TrainState) -> TrainState:
  params = initial_params(run)
  opt_state = jax.jit(run.tx.init, out_shardings=shardings.opt_state)(params)
  scalars = {"step": np.int32(0),
             "rng": np.asarray(jax.random.PRNGKey(run.config.seed + 1))}
  scalars = _put_global(scalars, {"step": shardings.step, "rng": shardings.rng})
  return TrainState(step=scalars["step"], params=params, opt_state=opt_state,
                    rng=scalars["rng"])


def compile_train_step(run: Run, shardings: TrainState):
  batch_sh = shd.batch_sharding(run.mesh)
  step = functools.partial(train_step, model=run.model, loss_fn=run.loss_fn, tx=run.tx,
                           deterministic=not run.config.train.dropout,
                           grad_cache_minibatch=run.config.train.grad_cache_minibatch)
  return jax.jit(step, in_shardings=(shardings, batch_sh),
                 out_shardings=(shardings, shd.replicated(run.mesh)), donate_argnums=0)


def local_value(tree):
  """Replicated global arrays -> numpy, also when other processes hold some devices."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def global_batch(run: Run, local_batch):
  sh = shd.batch_sharding(run.mesh)
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sh, a), local_batch)


# ----------------------------------------------------------------------------- eval

def _tower_encoder(run: Run, params, method: str, batch_size: int):
  """texts or images -> numpy [n, 1, D] through one tower of a TwoTower, with the
  parameters where they live (inputs replicated; output replicated)."""
  rep = shd.replicated(run.mesh)
  fn = jax.jit(lambda p, x: run.model.apply({"params": p}, x, method=method),
               out_shardings=rep)

  def put(tree):
    return jax.tree.map(lambda a: jax.make_array_from_callback(
        a.shape, rep, lambda idx, a=a: a[idx]), tree)

  def encode(items, instruction: str = ""):
    out = []
    for start in range(0, len(items), batch_size):
      chunk = items[start:start + batch_size]
      rows = len(chunk)
      if method == "encode_anchor" and run.model.towers == "image_text":
        x = np.asarray(chunk, np.float32)
        x = {"pixels": np.pad(x, ((0, batch_size - rows),) + ((0, 0),) * (x.ndim - 1))}
      else:
        x = run.eval_tokenizer.encode(list(chunk) + [""] * (batch_size - rows),
                                      instruction=instruction)
      with mesh_context(run):
        out.append(np.asarray(fn(params, put(x)).addressable_data(0))[:rows])
    return np.concatenate(out)
  return encode


def evaluate(run: Run, params, label: str) -> list[dict]:
  if isinstance(run.model, TwoTower):
    return _evaluate_two_tower(run, params, label)
  model = EmbeddingModel(run.bert, params, run.eval_tokenizer,
                         pooling=run.config.model.pooling,
                         pool_heads=run.config.model.pool_heads,
                         pool_latents=run.config.model.pool_latents)
  t0 = time.time()
  with mesh_context(run):
    encode = functools.partial(model.encode_all_layers, batch_size=run.config.eval.batch_size,
                               progress=f"eval ({label})")
    instruction = run.config.data.query_instruction
    rows = grid_eval.evaluate_grid(
        encode, run.eval_tasks, run.config.eval.layers, run.config.eval.dims,
        encode_queries=(functools.partial(encode, instruction=instruction)
                        if instruction else None))
  logging.info("eval (%s) took %.1fs", label, time.time() - t0)
  return rows


def _evaluate_two_tower(run: Run, params, label: str) -> list[dict]:
  t0 = time.time()
  bs = run.config.eval.batch_size
  texts = _tower_encoder(run, params, "encode_text", bs)
  anchors = _tower_encoder(run, params, "encode_anchor", bs)
  if run.model.towers == "image_text":
    rows = [dict(layer=1, dim=int(dim)) for dim in run.config.eval.dims]
    for task in run.eval_tasks:
      images = anchors(task.images)
      prompts = texts(task.prompts)
      for row in rows:
        row.update({f"{task.name}/{k}": v for k, v in
                    task.score(images[:, 0, :row["dim"]], prompts[:, 0, :row["dim"]]).items()})
  else:
    instruction = run.config.data.query_instruction
    rows = grid_eval.evaluate_grid(
        texts, run.eval_tasks, run.config.eval.layers, run.config.eval.dims,
        encode_queries=functools.partial(anchors, instruction=instruction))
  logging.info("eval (%s) took %.1fs", label, time.time() - t0)
  return rows


# ----------------------------------------------------------------------------- loop

class _StopSignal:
  """SIGTERM (and SIGINT) ask the loop to save and stop at the next step boundary."""

  def __init__(self):
    self.requested = False
    self._old = {}
    # With several processes, one process alone stopping would leave the others
    # waiting in a collective: there jax's preemption notifier owns SIGTERM and all
    # processes agree on the step through Checkpointer.reached_preemption.
    signals = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else ()
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._old[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning("received %s: saving a checkpoint and stopping",
                    signal.Signals(signum).name)
    self.requested = True

  def restore(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)


@dataclasses.dataclass
class Result:
  step: int
  completed: bool            # False when stopped by a signal before the last step
  before: list | None
  after: list | None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Result:
  stop = _StopSignal()
  try:
    return _train_and_evaluate(config, workdir, stop)
  finally:
    stop.restore()


def _train_and_evaluate(config, workdir, stop: _StopSignal) -> Result:
  run = setup(config, workdir)
  wd = run.workdir
  resuming = wd.check_config(config)
  wd.write_config(config, run.folder, run.bert)
  ckpt = Checkpointer(wd.checkpoints, keep=config.train.keep_checkpoints)
  abstract, shardings = abstract_state(run)
  data_iter = iter(run.dataset)
  if resuming and ckpt.latest_step() is not None:
    logging.info("resuming from %s/%d", wd.checkpoints, ckpt.latest_step())
    state = ckpt.restore(abstract, data_iter)
    wd.truncate_log(int(local_value(state.step)))
  else:
    state = new_state(run, shardings)
  step_fn = compile_train_step(run, shardings)
  writer = MetricWriter(str(wd / Workdir.TENSORBOARD), remote=wd.remote)

  def record_eval(step: int, rows: list[dict], label: str) -> None:
    if label == "after":   # a rerun of a finished run evaluates again: replace it
      wd.drop_log_entries(Workdir.EVAL_LOG, lambda r: r.get("label") == "after")
    wd.append_log({"step": step, "label": label, "grid": rows}, Workdir.EVAL_LOG)
    writer.grid(step, rows)
    writer.flush()

  try:
    return _loop(run, config, wd, ckpt, state, data_iter, step_fn, stop, writer,
                 record_eval)
  finally:
    writer.close()


def _loop(run, config, wd, ckpt, state, data_iter, step_fn, stop, writer, record_eval):
  total = config.train.steps
  before = (_load_or_eval_before(run, state, wd, record_eval) if config.eval.before
            else None)
  start = int(local_value(state.step))
  t_last, n_last = time.time(), start
  logging.info("training steps %d..%d, global batch %d, mesh %s", start, total,
               config.train.batch_size, dict(run.mesh.shape))
  step = start
  while step < total:
    if stop.requested or ckpt.reached_preemption(step):
      if step not in ckpt.all_steps():  # a regular save may have just written it
        ckpt.save(step, state, data_iter, force=True)
      ckpt.wait()
      logging.info("stopped at step %d; checkpoint saved, rerun the same command to "
                   "continue", step)
      ckpt.close()
      return Result(step=step, completed=False, before=before, after=None)
    batch = global_batch(run, next(data_iter))
    with mesh_context(run):
      state, metrics = step_fn(state, batch)
    step += 1
    if step % config.train.log_every == 0 or step == total:
      metrics = local_value(metrics)
      loss = float(metrics["loss"])
      if not math.isfinite(loss):
        raise FloatingPointError(f"loss is {loss} at step {step}; lower "
                                 "optim.learning_rate or check the data")
      now = time.time()
      rate = (step - n_last) * config.train.batch_size / max(now - t_last, 1e-9)
      eta = (total - step) * config.train.batch_size / max(rate, 1e-9)
      record = {"step": step, "loss": loss, "learning_rate": float(run.schedule(step - 1)),
                "examples_per_sec": rate, "grad_norm": float(metrics["grad_norm"])}
      wd.append_log(record)
      writer.scalars(step, {k: v for k, v in record.items() if k != "step"}, "train/")
      logging.info("step %d/%d  loss %.4f  lr %.2e  %.1f ex/s  eta %ds", step, total,
                   loss, record["learning_rate"], rate, eta)
      t_last, n_last = now, step
    if step % config.train.checkpoint_every == 0 or step == total:
      ckpt.save(step, state, data_iter)
    if config.train.eval_every and step % config.train.eval_every == 0 and step < total:
      rows = evaluate(run, state.params, f"step {step}")
      record_eval(step, rows, f"step {step}")
      if jax.process_index() == 0:
        print(grid_eval.format_table(before, rows), flush=True)
  ckpt.wait()
  ckpt.close()

  after = evaluate(run, state.params, "after")
  record_eval(step, after, "after")
  if jax.process_index() == 0:
    wd.write(Workdir.METRICS, json.dumps({"before": before, "after": after}, indent=1))
    wd.write(Workdir.HEATMAP, grid_eval.heatmap_png(before, after))
    print(grid_eval.format_table(before, after), flush=True)
    logging.info("wrote %s and %s", wd / Workdir.METRICS, wd / Workdir.HEATMAP)
  return Result(step=step, completed=True, before=before, after=after)


def _load_or_eval_before(run: Run, state: TrainState, wd: Workdir, record_eval):
  # Evaluation runs collectives, so every process must take the same branch: process
  # 0's view of the workdir decides (on a pod, other hosts may not share its disk).
  from jax.experimental import multihost_utils
  cached = bool(multihost_utils.broadcast_one_to_all(
      np.int32(wd.exists(Workdir.METRICS_BEFORE))))
  if cached:
    if jax.process_index() != 0:
      return None  # only process 0 writes metrics.json
    return wd.read_json(Workdir.METRICS_BEFORE)
  if int(local_value(state.step)) != 0:
    return None  # trained before metrics were asked for: nothing to compare with
  rows = evaluate(run, state.params, "before")
  wd.write(Workdir.METRICS_BEFORE, json.dumps(rows, indent=1))
  record_eval(0, rows, "before")
  if jax.process_index() == 0:
    print(grid_eval.format_table(None, rows), flush=True)
  return rows
