"""The train state: a plain pytree, saved and sharded as such; how it is created
(pretrained weights or a random init, born sharded), its shardings, and the compiled
train step (Flax ImageNet's `create_train_state` / `train_step` split)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxembed import sharding as shd
from jaxembed.loaders import folder_head
from jaxembed.models import abstract_params, load_encoder_weights, lora
from jaxembed.train import centring


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar
  params: Any            # {'encoder': ...}
  opt_state: Any
  rng: jax.Array         # uint32[2] raw key; per-step keys are fold_in(rng, step)


def state_shardings(run, abstract_opt_state) -> TrainState:
  """Optimizer state laid out like its parameters; a frozen parameter's state
  (optim.trainable) is an empty MaskedNode and stays one."""
  rep = shd.replicated(run.mesh)
  masked = lambda x: isinstance(x, optax.MaskedNode)
  opt = optax.tree_map_params(run.tx, lambda x, s: x if masked(x) else s,
                              abstract_opt_state, run.param_shardings,
                              transform_non_params=lambda _: rep, is_leaf=masked)
  return TrainState(step=rep, params=run.param_shardings, opt_state=opt, rng=rep)


def abstract_state(run):
  """(the state's ShapeDtypeStructs carrying their shardings, the shardings)."""
  shapes = abstract_params(run.model, run.loss_params, run.config.optim.lora)
  opt_shapes = jax.eval_shape(run.tx.init, shapes)
  shardings = state_shardings(run, opt_shapes)
  shapes_state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=shapes,
                            opt_state=opt_shapes,
                            rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes_state, shardings), shardings


def initial_params(run, start: dict | None = None):
  """Pretrained weights placed straight into their shards, or a jitted random init
  whose outputs are born sharded. A trainable pooler on a pretrained encoder, and a
  two-tower model's towers, are initialised at random; then the pretrained text
  encoder replaces its part (`model.pretrained_paths`). `start`: the model's weights
  to begin from instead (a previous training stage's, `train/stages.py`); LoRA factors
  and the objective's parameters are still this run's own."""
  shardings = {k: v for k, v in run.param_shardings.items() if k not in ("loss", lora.GROUP)}
  if start is not None:
    if set(start) != set(shardings):
      raise ValueError(f"start params have groups {sorted(start)}, the model "
                       f"{sorted(shardings)}")
    params = {k: jax.device_put(v, shardings[k]) for k, v in start.items()}
  else:
    params = _random_init(run, shardings)
  if start is None and run.config.model.init == "pretrained":
    cfg, paths = run.model.text_config, run.model.pretrained_paths
    if len(paths) == 1 and not cfg.scan_layers:
      # Tensor by tensor: each leaf goes onto its shards as soon as it is read.
      target = _get(shardings, paths[0])
      loaded = load_encoder_weights(
          run.folder.weights, cfg,
          place=lambda leaf, value: shd.host_to_global(value, _get(target, leaf)))
      params = _replace(params, paths[0], loaded["encoder"])
    else:
      loaded = load_encoder_weights(run.folder.weights, cfg)["encoder"]
      for path in paths:
        params = _replace(params, path, shd.host_to_global(loaded, _get(shardings, path)))
    if run.model.head or run.model.head_norm:
      # The folder's Dense chain and LayerNorm after pooling, trained with the encoder.
      head = folder_head(run.folder, cfg.hidden_size, as_exit=False)["params"]
      params = dict(params, **{k: shd.host_to_global(v, shardings[k])
                               for k, v in head.items()})
  if lora.GROUP in run.param_shardings:
    factors = lora.init(abstract_params(run.model, None, run.config.optim.lora)[lora.GROUP],
                        run.config.seed)
    params = dict(params, **{lora.GROUP: shd.host_to_global(
        factors, run.param_shardings[lora.GROUP])})
  if run.loss_params:
    params = dict(params, loss=shd.host_to_global(run.loss_params,
                                                  run.param_shardings["loss"]))
  return params


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _replace(tree, path, value):
  if not path:
    return value
  return dict(tree, **{path[0]: _replace(tree.get(path[0], {}), path[1:], value)})


def _random_init(run, shardings):
  """The model's random initial parameters, jitted with `out_shardings` so that each
  device creates only its own shard. Parts that pretrained weights replace are never
  materialised: XLA drops the computation of outputs nobody reads only within one
  program, so the pretrained case initialises just the remaining parts."""
  inputs = run.model.example_inputs()
  keep = _trainable_parts(run)

  def init(rng):
    params = nn.unbox(run.model.init(rng, *inputs))["params"]
    return {k: v for k, v in params.items() if k in keep}
  if not keep:
    return {}
  sub = {k: v for k, v in shardings.items() if k in keep}
  return shd.mesh_jit(init, run.mesh, run.rules, out_shardings=sub)(
      jax.random.PRNGKey(run.config.seed))


def _trainable_parts(run) -> set:
  """Top-level parameter groups a random init must create: all of them, except a
  single-tower encoder that pretrained weights replace whole."""
  top = set(run.param_shardings) - {"loss", lora.GROUP}
  if run.config.model.init == "pretrained":
    top -= {path[0] for path in run.model.pretrained_paths if len(path) == 1}
  return top


def start_params(run, start: dict | None = None):
  """The parameters step 0 trains from: `initial_params`, with the centred exits'
  layer means estimated on a fresh start (model.centred_exits; a stage's `start`
  keeps its own)."""
  params = initial_params(run, start)
  if start is None and run.model.centred_exits:
    params = centring.with_exit_centres(run, params)
  return params


def new_state(run, shardings: TrainState, start: dict | None = None) -> TrainState:
  """Step 0: `start_params` (`start`: see `initial_params`), a fresh optimizer state
  and the seed's RNG."""
  params = start_params(run, start)
  opt_state = jax.jit(run.tx.init, out_shardings=shardings.opt_state)(params)
  scalars = {"step": np.int32(0),
             "rng": np.asarray(jax.random.PRNGKey(run.config.seed + 1))}
  scalars = shd.host_to_global(scalars, {"step": shardings.step, "rng": shardings.rng})
  return TrainState(step=scalars["step"], params=params, opt_state=opt_state,
                    rng=scalars["rng"])
