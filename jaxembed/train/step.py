"""The one train step: a pure function of (state, batch), model and loss injected."""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxembed import sharding as shd
from jaxembed.models import lora
from jaxembed.train.grad_cache import grad_cache_value_and_grad
from jaxembed.train.state import TrainState


def encode_pairs(model: nn.Module, params, batch, rng, *, deterministic: bool):
  """The model's pooled (anchor, positive[, negatives]) vectors of a batch, through
  the embedder interface (`models/embedder.py`): each [batch, layers, width],
  negatives [batch, k, layers, width]."""
  return model.apply({"params": params}, batch, deterministic=deterministic,
                     rngs=None if deterministic else {"dropout": rng},
                     method="encode_pairs")


def teacher_embeddings(model: nn.Module, teacher_params, batch):
  """The frozen teacher's vectors of a batch's texts: its last layer, full width,
  deterministic, constant: (anchors [batch, width], positives[, negatives
  [batch, k, width]])."""
  out = encode_pairs(model, teacher_params, batch, None, deterministic=True)
  return tuple(jax.lax.stop_gradient(x[..., -1, :]) for x in out)


def loss_inputs(model: nn.Module, batch, teacher_params=None) -> dict:
  """What loss_fn takes from a batch besides the vectors: graded pairs' `grades`,
  grouped pairs' `groups`, the frozen teacher's vectors (`teacher`), and the weights
  of the pair and teacher terms for the batch's dataset (`pair_weight`,
  `teacher_weight`: each batch is drawn from one dataset of a mixture, so the mean of
  its rows' weights is that dataset's)."""
  extra = {}
  if "score" in batch:      # graded pairs, for the ranking objectives
    extra["grades"] = batch["score"]
  if "group" in batch:      # same-group pairs are positives (grouped objectives)
    extra["groups"] = batch["group"]
  if teacher_params is not None:
    extra["teacher"] = teacher_embeddings(model, teacher_params, batch)
    # each text's token count, laid out as the teacher's vectors, for terms that hold
    # only some texts (loss.distill.anchor_min_tokens)
    extra["text_tokens"] = tuple(
        jnp.sum(batch[side]["attention_mask"], axis=-1)
        for side in ("anchor", "positive", "negatives") if side in batch)
  if "pair_weight" in batch:      # a mixture's per-dataset weights
    extra["pair_weight"] = jnp.mean(batch["pair_weight"])
  if "teacher_weight" in batch and teacher_params is not None:
    extra["teacher_weight"] = jnp.mean(batch["teacher_weight"])
  return extra


def train_step(state: TrainState, batch, teacher_params=None, *, model: nn.Module,
               loss_fn: Callable, tx: optax.GradientTransformation,
               deterministic: bool = False, grad_cache_minibatch: int = 0,
               check_finite: bool = True, trainable=None, lora_scale: float = 0.0,
               lora_dropout: float = 0.0):
  """loss_fn(anchor_layers, positive_layers[, negative_layers], *, rng, loss_params)
  -> (loss, aux); loss_params is params["loss"] (a learnable temperature) or None.

  The dropout key is fold_in(state.rng, state.step): it depends on nothing but the
  seed and the step, so a resumed run draws the same masks as an uninterrupted one.
  grad_cache_minibatch > 0 encodes the batch in mini-batches of that many pairs
  (GradCache), bounding activation memory by the mini-batch. check_finite: the
  step reports metrics['finite'] = False when its loss or gradient norm is not
  finite. teacher_params: a frozen teacher of the same model (loss.distill), whose
  vectors of the batch reach loss_fn as `teacher`. A batch with 'score' (graded
  pairs) passes it to loss_fn as `grades`, one with 'group' as `groups`.
  trainable: bools like the params (optim.trainable); the frozen ones enter the
  forward pass behind stop_gradient, so no gradient is computed for them (nor, below
  the lowest trainable layer, for activations), and their update is zero.
  lora_scale > 0: params carry LoRA factors ('lora'), merged into their kernels
  (W + lora_scale * a @ b) before the forward pass, so the gradient reaches them;
  with lora_dropout > 0 the factors act on the dropped-out activations instead
  (`lora.unmerged`), whatever train.dropout says about the encoder's own dropout.
  """
  rng = jax.random.fold_in(state.rng, state.step)

  def encode(params, sub_batch, key):
    if trainable is not None:
      params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params,
                            trainable)
    if lora_scale and lora_dropout:
      base = {k: v for k, v in params.items() if k != lora.GROUP}
      with lora.unmerged(params[lora.GROUP], lora_scale, lora_dropout,
                         jax.random.fold_in(key, 1)):
        return encode_pairs(model, base, sub_batch, key, deterministic=deterministic)
    if lora_scale:
      params = lora.merge(params, lora_scale)
    return encode_pairs(model, params, sub_batch, key, deterministic=deterministic)

  encode_rng, loss_rng = jax.random.split(rng)
  extra = loss_inputs(model, batch, teacher_params)

  def objective(embeddings, params):
    return loss_fn(*embeddings, rng=loss_rng, loss_params=params.get("loss"), **extra)

  if grad_cache_minibatch:
    (loss, aux), grads = grad_cache_value_and_grad(
        encode, objective, state.params, batch, encode_rng, grad_cache_minibatch)
  else:
    (loss, aux), grads = jax.value_and_grad(
        lambda p: objective(encode(p, batch, encode_rng), p), has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": grad_norm, **aux}
  if check_finite:
    # Two scalars checked on the device; the flag travels with the metrics and the
    # loop reads it before every checkpoint and log line, so a state that saw a
    # non-finite loss or gradient is never saved (a select or a conditional around the
    # update, which would keep the old state, costs 2-4% of the step on CPU).
    metrics["finite"] = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


class TeacherStep:
  """A jitted step(state, batch, teacher_params) called as step(state, batch): the
  teacher's parameters are an argument (laid out like the student's), not constants
  baked into the compiled program."""

  def __init__(self, jitted: shd.MeshJit, teacher_params):
    self.jitted, self.teacher_params = jitted, teacher_params
    self.mesh, self.rules = jitted.mesh, jitted.rules

  def __call__(self, state, batch):
    return self.jitted(state, batch, self.teacher_params)

  def lower(self, state, batch):
    return self.jitted.lower(state, batch, self.teacher_params)


def compile_train_step(run, shardings: TrainState, check_finite: bool = True):
  """The train step jitted once with explicit shardings and the state donated; it
  carries the run's mesh and logical rules. With loss.distill, the pretrained weights
  (`run.teacher_params()`) go with it as the frozen teacher."""
  step = functools.partial(train_step, model=run.train_model, loss_fn=run.loss_fn, tx=run.tx,
                           deterministic=not run.config.train.dropout,
                           grad_cache_minibatch=run.config.train.grad_cache_minibatch,
                           check_finite=check_finite, trainable=run.trainable,
                           lora_scale=run.lora_scale,
                           lora_dropout=float(run.config.optim.lora.dropout))
  batch_sh, rep = shd.batch_sharding(run.mesh), shd.replicated(run.mesh)
  if not run.distill:
    return shd.mesh_jit(step, run.mesh, run.rules, in_shardings=(shardings, batch_sh),
                        out_shardings=(shardings, rep), donate_argnums=0)
  teacher = run.teacher_params()
  teacher_sh = {k: v for k, v in run.param_shardings.items()
                if k not in ("loss", lora.GROUP)}
  jitted = shd.mesh_jit(step, run.mesh, run.rules,
                        in_shardings=(shardings, batch_sh, teacher_sh),
                        out_shardings=(shardings, rep), donate_argnums=0)
  return TeacherStep(jitted, teacher)
