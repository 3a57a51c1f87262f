"""Where the MiniLM train step's time goes on this machine.

  python benchmarks/profile_step.py [--rounds=8] [--dtype=float32]

The workload of `vs_sentence_transformers.py` (all-MiniLM-L6-v2, 32 pairs, 64 tokens,
dropout, AdamW, the 30-cell grid). Shared CPUs are noisy, so every figure is the
median over `--rounds` interleaved repetitions within one process, and the parts are
measured as differences between variants of the same jitted step:

  dropout            full step - step without dropout
  grid loss          step without dropout - the same with InfoNCE on (6, 384) only
  backward           that step - its forward pass (loss value only)
  optimizer          AdamW update + clip on a gradient of the parameters' shape
  forward parts      attention, the dense layers, layer norms + GELU + residuals,
                     each jitted alone at the step's shapes (x 6 layers, x 3 for
                     forward + backward)
  host               the grain pipeline: read, tokenise and batch one step's pairs

and the compiled step's FLOP count (XLA cost analysis) gives its rate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import tiny  # noqa: E402
from benchmarks.vs_sentence_transformers import cpu_name  # noqa: E402
from configs import common  # noqa: E402
from jaxembed import sharding as shd, train  # noqa: E402
try:   # the shared layers; in older trees they lived in models/bert.py
  from jaxembed.models import layers  # noqa: E402
except ImportError:
  from jaxembed.models import bert as layers  # noqa: E402
try:   # the host malloc policy of the entry points; absent in older trees
  from jaxembed import hostmem  # noqa: E402
except ImportError:
  hostmem = None

BATCH, TOKENS = tiny.size(32, 4), tiny.size(64, 16)


def config(dtype, dropout=True, grid=True):
  c = tiny.config(common.pair_loss_config())
  c.data.seq_len = TOKENS
  c.data.pack_length = 0
  c.train.batch_size = BATCH
  c.train.dropout = dropout
  c.model.bert_overrides.dtype = dtype
  c.eval.ood = ()
  if not grid:
    c.loss.matryoshka.mode = "none"
  return c


def step_variant(c):
  run = train.setup(c, "/nonexistent-unused")
  _, shardings = train.abstract_state(run)
  state = train.new_state(run, shardings)
  return run, state, train.compile_train_step(run, shardings)


def batches(run, n, rng):
  out = []
  for _ in range(n):
    a = rng.integers(2000, 30000, (BATCH, TOKENS)).astype(np.int32)
    p = rng.integers(2000, 30000, (BATCH, TOKENS)).astype(np.int32)
    local = {"anchor": {"input_ids": a, "attention_mask": np.ones_like(a)},
             "positive": {"input_ids": p, "attention_mask": np.ones_like(p)}}
    out.append(shd.host_batch_to_global(run.mesh, local))
  return out


def timed(fn):
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rounds", type=int, default=8)
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  variants = {
      "full": config(args.dtype),
      "no dropout": config(args.dtype, dropout=False),
      "no dropout, (6, 384) only": config(args.dtype, dropout=False, grid=False),
  }
  built = {name: list(step_variant(c)) for name, c in variants.items()}
  run = built["full"][0]
  data = batches(run, 2, rng)

  # The forward pass alone of the plain variant (loss value, no gradient).
  plain_run, plain_state, _ = built["no dropout, (6, 384) only"]

  def forward_loss(params, batch):
    emb = plain_run.model.apply({"params": params}, batch, deterministic=True,
                                method="encode_pairs")
    return plain_run.loss_fn(*emb, rng=jax.random.key(0), loss_params=None)[0]
  forward = shd.mesh_jit(forward_loss, plain_run.mesh, plain_run.rules)
  params = jax.tree.map(jnp.copy, plain_state.params)  # the steps donate theirs

  # The optimizer alone.
  grads = jax.tree.map(jnp.ones_like, params)
  opt_state = run.tx.init(params)
  opt = jax.jit(lambda g, s, p: run.tx.update(g, s, p))

  # Forward parts at the step's shapes: 2 * BATCH sequences of TOKENS tokens.
  cfg = run.text_config
  n, w, h = 2 * BATCH, cfg.hidden_size, cfg.num_heads
  x = jnp.asarray(rng.standard_normal((n, TOKENS, w)), jnp.float32)
  km = jnp.ones((n, 1, 1, TOKENS), bool)
  qkv = jnp.asarray(rng.standard_normal((n, TOKENS, h, w // h)), jnp.float32)
  k_in = jnp.asarray(rng.standard_normal((w, cfg.intermediate_size)) * 0.02, jnp.float32)
  k_out = jnp.asarray(rng.standard_normal((cfg.intermediate_size, w)) * 0.02, jnp.float32)
  k_sq = jnp.asarray(rng.standard_normal((w, w)) * 0.02, jnp.float32)

  # (Trees before layers.attention / layers.matmul existed: XLA's fused call, tensordot.)
  def attn(q):
    if hasattr(layers, "attention"):
      return layers.attention(q, q, q, km, dtype=cfg.dtype)
    return jax.nn.dot_product_attention(q, q, q, mask=km)

  def mm(x, k):
    return layers.matmul(x, k, 1, cfg.dtype) if hasattr(layers, "matmul") else x @ k

  def dense(x, k_sq, k_in, k_out):  # q, k, v, output (4 x w->w), MLP (w->4w->w)
    y = sum(mm(x, k_sq) for _ in range(4))
    return y + mm(mm(x, k_in), k_out)

  ln = nn.LayerNorm(epsilon=1e-12)
  ln_p = ln.init(jax.random.key(0), x)
  wide = jnp.asarray(rng.standard_normal((n, TOKENS, cfg.intermediate_size)), jnp.float32)

  def elementwise(x, wide):
    return ln.apply(ln_p, x + x) + ln.apply(ln_p, x * 2), nn.gelu(wide, approximate=False)

  parts = {
      "attention": (jax.jit(jax.value_and_grad(lambda q: (attn(q) * qkv).sum())), (qkv,)),
      "dense layers": (jax.jit(jax.value_and_grad(
          lambda *a: (dense(*a) * x).sum(), argnums=(0, 1, 2, 3))),
          (x, k_sq, k_in, k_out)),
      "layer norm + GELU + residual": (
          jax.jit(jax.value_and_grad(lambda x, wd: sum(t.sum() for t in elementwise(x, wd)),
                                     argnums=(0, 1))), (x, wide)),
  }

  # Host side: one step's batch from the grain pipeline (read, tokenise, batch).
  it = iter(run.dataset)
  next(it)

  times = {k: [] for k in (*built, "forward only", "optimizer", *parts, "host batch")}
  for name, (r, state, step) in built.items():  # compile
    state, _ = step(state, data[0])
    built[name][1] = state
  forward(params, data[0]).block_until_ready()
  jax.block_until_ready(opt(grads, opt_state, params))
  for fn, a in parts.values():
    jax.block_until_ready(fn(*a))
  for r in range(args.rounds):
    names = list(built)
    for name in names if r % 2 == 0 else names[::-1]:
      _, state, step = built[name]
      out = {}
      times[name].append(timed(lambda: out.setdefault("m", step(state, data[1]))))
      built[name][1] = out["m"][0]
    times["forward only"].append(timed(lambda: forward(params, data[1])))
    times["optimizer"].append(timed(lambda: opt(grads, opt_state, params)))
    for pname, (fn, a) in parts.items():
      times[pname].append(timed(lambda: fn(*a)))
    times["host batch"].append(timed(lambda: next(it)))
  med = {k: statistics.median(v) for k, v in times.items()}

  step_fn = built["full"][2]
  flops = None
  try:
    compiled = step_fn.lower(built["full"][1], data[1]).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = cost.get("flops")
  except Exception as e:  # cost analysis is best effort across jax versions
    print(f"(no cost analysis: {e})")

  full = med["full"]
  n_layers = cfg.num_layers
  rows = [
      ("dropout (bits + masks)", med["full"] - med["no dropout"]),
      ("grid loss (30 cells vs 1)", med["no dropout"] - med["no dropout, (6, 384) only"]),
      ("backward pass", med["no dropout, (6, 384) only"] - med["forward only"]
       - med["optimizer"]),
      ("forward pass", med["forward only"]),
      ("  attention (fwd+bwd x layers)", med["attention"] * n_layers),
      ("  dense layers (fwd+bwd x layers)", med["dense layers"] * n_layers),
      ("  layer norm, GELU, residual (fwd+bwd x layers)",
       med["layer norm + GELU + residual"] * n_layers),
      ("optimizer (AdamW + clip)", med["optimizer"]),
      ("host: read + tokenise + batch (not overlapped)", med["host batch"]),
  ]
  print(f"cpu: {cpu_name()} x {os.cpu_count()}; jax {jax.__version__}; dtype {args.dtype}; "
        f"{args.rounds} interleaved rounds; batch {BATCH} pairs x {TOKENS} tokens")
  print(f"full step: {full * 1e3:.0f} ms ({BATCH / full:.1f} examples/s)"
        + (f", {flops / 1e9:.0f} GFLOP, {flops / full / 1e9:.0f} GFLOP/s" if flops else ""))
  print(f"{'part':52s} {'ms':>7s} {'% of step':>9s}")
  for name, t in rows:
    print(f"{name:52s} {t * 1e3:7.0f} {100 * t / full:8.1f}%")


if __name__ == "__main__":
  if hostmem is not None:
    hostmem.reexec_if_needed()   # as the entry points run (jaxembed/hostmem.py)
  main()
