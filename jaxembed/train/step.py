"""The one train step: a pure function of (state, batch), model and loss injected."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxembed import sharding as shd
from jaxembed.losses.registry import BatchInputs
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


@dataclasses.dataclass(frozen=True)
class OtherTeacher:
  """A frozen teacher that is not the student's own pretrained model
  (loss.distill.teacher): `module` (its sub-model as `encode` runs it by default,
  one layer out) reads batch['teacher'], the texts through its own tokenizer, and
  gives its first `dim` coordinates. `mapped`: the anchor reads those vectors through
  a fixed map into the student's space (loss.distill.anchor_map, `train/anchor_map.py`);
  the teacher's parameters are then {"model": its weights, "anchor_map": the map}."""
  module: nn.Module
  dim: int
  mapped: bool = False


def teacher_embeddings(model: nn.Module, teacher_params, batch,
                       other: OtherTeacher | None = None):
  """The frozen teacher's vectors of a batch's texts, deterministic, constant:
  (anchors [batch, width], positives[, negatives [batch, k, width]]). The student's
  own pretrained weights (`other` None) give their last layer, full width; another
  model gives its default sub-model's vectors."""
  if other is None:
    out = encode_pairs(model, teacher_params, batch, None, deterministic=True)
    return tuple(jax.lax.stop_gradient(x[..., -1, :]) for x in out)
  if other.mapped:
    teacher_params = teacher_params["model"]
  out = encode_pairs(other.module, teacher_params, batch["teacher"], None,
                     deterministic=True)
  return tuple(jax.lax.stop_gradient(x[..., 0, :other.dim]) for x in out)


def loss_inputs(model: nn.Module, batch, teacher_params=None,
                other: OtherTeacher | None = None) -> BatchInputs:
  """What the objective takes from a batch besides the vectors: graded pairs' `grades`,
  grouped pairs' `groups`, the frozen teacher's vectors (`teacher`) and each text's
  token count laid out like them, the teacher's vectors through the anchor's map
  (`anchor_teacher`, loss.distill.anchor_map), and the weights of the pair and
  teacher terms for the batch's dataset (each batch is drawn from one dataset of a
  mixture, so the mean of its rows' weights is that dataset's)."""
  teacher = tokens = mapped = None
  if teacher_params is not None:
    teacher = teacher_embeddings(model, teacher_params, batch, other)
    tokens = tuple(jnp.sum(batch[side]["attention_mask"], axis=-1)
                   for side in ("anchor", "positive", "negatives") if side in batch)
    if other is not None and other.mapped:
      w = teacher_params["anchor_map"]
      mapped = tuple(x.astype(jnp.float32) @ w for x in teacher)
  mean = lambda k: jnp.mean(batch[k]) if k in batch else None  # noqa: E731
  return BatchInputs(grades=batch.get("score"), groups=batch.get("group"),
                     teacher=teacher, text_tokens=tokens, anchor_teacher=mapped,
                     pair_weight=mean("pair_weight"),
                     teacher_weight=None if teacher is None else mean("teacher_weight"))


@dataclasses.dataclass(frozen=True)
class ParamView:
  """How the step's forward pass sees the parameters, built once in setup.

  trainable: bools like the params (optim.trainable); the frozen ones enter the
  forward pass behind stop_gradient, so no gradient is computed for them (nor, below
  the lowest trainable layer, for activations), and their update is zero.
  lora_scale > 0: params carry LoRA factors ('lora'), merged into their kernels
  (W + lora_scale * a @ b) before the forward pass, so the gradient reaches them;
  with lora_dropout > 0 the factors act on the dropped-out activations instead
  (`lora.unmerged`), whatever train.dropout says about the encoder's own dropout."""
  trainable: Any = None
  lora_scale: float = 0.0
  lora_dropout: float = 0.0

  def merged(self, params):
    """The weights evaluation and export see: LoRA factors merged (a no-op without)."""
    return lora.merge(params, self.lora_scale) if self.lora_scale else params

  def apply(self, fn: Callable, params, key):
    """fn(params) with the view's parameters (key: LoRA dropout's masks)."""
    if self.trainable is not None:
      params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params,
                            self.trainable)
    if self.lora_scale and self.lora_dropout:
      base = {k: v for k, v in params.items() if k != lora.GROUP}
      with lora.unmerged(params[lora.GROUP], self.lora_scale, self.lora_dropout,
                         jax.random.fold_in(key, 1)):
        return fn(base)
    return fn(self.merged(params))


@dataclasses.dataclass(frozen=True)
class Forward:
  """The step's forward pass and gradient, composed before the step: the model, the
  parameter view (freezing, LoRA), dropout, and how the gradient is taken (the whole
  batch at once, or GradCache: mini-batches of `grad_cache_minibatch` pairs, bounding
  activation memory by the mini-batch)."""
  model: nn.Module
  view: ParamView = ParamView()
  deterministic: bool = False
  grad_cache_minibatch: int = 0

  def encode(self, params, batch, key):
    return self.view.apply(lambda p: encode_pairs(self.model, p, batch, key,
                                                  deterministic=self.deterministic),
                           params, key)

  def value_and_grad(self, objective: Callable, params, batch, key):
    """((loss, aux), grads) of objective(embeddings, params) at `params`."""
    if self.grad_cache_minibatch:
      return grad_cache_value_and_grad(self.encode, objective, params, batch, key,
                                       self.grad_cache_minibatch)
    return jax.value_and_grad(lambda p: objective(self.encode(p, batch, key), p),
                              has_aux=True)(params)


def train_step(state: TrainState, batch, teacher_params=None, *, forward: Forward,
               loss_fn: Callable, tx: optax.GradientTransformation,
               other_teacher: OtherTeacher | None = None):
  """One optimisation step; loss_fn(anchor_layers, positive_layers[, negative_layers],
  *, rng, loss_params, inputs) -> (loss, aux), loss_params being params["loss"] (a
  learnable temperature) or None, inputs the batch's `BatchInputs`.

  The dropout key is fold_in(state.rng, state.step): it depends on nothing but the
  seed and the step, so a resumed run draws the same masks as an uninterrupted one.
  teacher_params: a frozen teacher of the same model (loss.distill), or of
  `other_teacher`'s (loss.distill.teacher). The step reports
  metrics['finite'] = False when its loss or gradient norm is not finite; the loop
  reads it before every checkpoint and log line, so a state that saw a non-finite
  loss or gradient is never saved."""
  rng = jax.random.fold_in(state.rng, state.step)
  encode_rng, loss_rng = jax.random.split(rng)
  inputs = loss_inputs(forward.model, batch, teacher_params, other_teacher)

  def objective(embeddings, params):
    return loss_fn(*embeddings, rng=loss_rng, loss_params=params.get("loss"),
                   inputs=inputs)

  (loss, aux), grads = forward.value_and_grad(objective, state.params, batch, encode_rng)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": grad_norm, **aux,
             "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


class TeacherStep:
  """A jitted step(state, batch, teacher_params) called as step(state, batch): the
  teacher's parameters are an argument (laid out like the student's, or replicated:
  another model's), not constants baked into the compiled program."""

  def __init__(self, jitted: shd.MeshJit, teacher_params):
    self.jitted, self.teacher_params = jitted, teacher_params
    self.mesh, self.rules = jitted.mesh, jitted.rules

  def __call__(self, state, batch):
    return self.jitted(state, batch, self.teacher_params)

  def lower(self, state, batch):
    return self.jitted.lower(state, batch, self.teacher_params)


def compile_train_step(run, shardings: TrainState):
  """The train step jitted once with explicit shardings and the state donated; it
  carries the run's mesh and logical rules. With loss.distill, the pretrained weights
  (`run.teacher_params()`) go with it as the frozen teacher, or another model's
  (loss.distill.teacher: `run.other_teacher`), replicated on every device."""
  step = functools.partial(train_step, forward=run.forward, loss_fn=run.loss_fn,
                           tx=run.tx, other_teacher=run.other_teacher)
  batch_sh, rep = shd.batch_sharding(run.mesh), shd.replicated(run.mesh)
  if not run.distill:
    return shd.mesh_jit(step, run.mesh, run.rules, in_shardings=(shardings, batch_sh),
                        out_shardings=(shardings, rep), donate_argnums=0)
  teacher = run.teacher_params()
  if run.other_teacher is not None:
    teacher_sh = jax.tree.map(lambda _: rep, teacher)
  else:
    teacher_sh = {k: v for k, v in run.param_shardings.items()
                  if k not in ("loss", lora.GROUP)}
  jitted = shd.mesh_jit(step, run.mesh, run.rules,
                        in_shardings=(shardings, batch_sh, teacher_sh),
                        out_shardings=(shardings, rep), donate_argnums=0)
  return TeacherStep(jitted, teacher)
