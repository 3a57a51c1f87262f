"""Distillation of the frozen pretrained model into every Matryoshka cell
(loss.distill): the loss against a float64 NumPy loop, its wiring through the train
step (the teacher is the pretrained model's last layer, full width, and stays frozen),
and the config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxembed import sharding as shd, train
from jaxembed.errors import ConfigError, ModelLoadError
from jaxembed.losses import build_cells
from jaxembed.losses.distillation import relational_kd, teacher_distillation
from jaxembed.losses.registry import BatchInputs, make_loss
from test_train_step import batch_with_negatives


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def relational_kd_reference(student, teacher, scale, temperature, rows=None):
  """KL(teacher || student) per text over every other text, a float64 loop; with
  `rows`, averaged over those texts only."""
  s, t = _unit(np.float64(student)), _unit(np.float64(teacher))
  n = len(s)
  rows = range(n) if rows is None else np.flatnonzero(rows)
  total = 0.0
  for i in rows:
    others = [j for j in range(n) if j != i]
    ls = np.array([scale * s[i] @ s[j] for j in others]) / temperature
    lt = np.array([scale * t[i] @ t[j] for j in others]) / temperature
    p = np.exp(lt - lt.max()); p /= p.sum()
    log_q = ls - ls.max() - np.log(np.exp(ls - ls.max()).sum())
    total += np.sum(p * (np.log(p) - log_q))
  return total / len(rows) * temperature ** 2


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_relational_kd_matches_a_float64_loop(temperature):
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(10, 6)), rng.normal(size=(10, 16))
  got = relational_kd(jnp.float32(student), jnp.float32(teacher), scale=20.0,
                      temperature=temperature)
  want = relational_kd_reference(student, teacher, 20.0, temperature)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)
  # the teacher's own structure costs nothing; any other is penalised
  assert float(relational_kd(jnp.float32(teacher), jnp.float32(teacher))) < 1e-6
  assert want > 0.01


def test_teacher_distillation_weights_cells_and_anchors_the_full_model():
  rng = np.random.default_rng(1)
  n, layers, width = 8, 3, 12
  student = rng.normal(size=(n, layers, width))
  teacher = rng.normal(size=(n, width))
  cells = build_cells("grid", num_layers=layers, hidden=width, layers=(1, 3),
                      dims=(4, 12), layer_weighting="linear")
  loss, parts = teacher_distillation(
      jnp.float32(student), jnp.float32(teacher), cells=cells,
      layer_index={1: 0, 2: 1, 3: 2}, full_layer=3, weight=0.5, anchor_weight=2.0)
  weights = {c.name: c.weight for c in cells}
  per_cell = {c.name: relational_kd_reference(student[:, c.layer - 1, :c.dim], teacher,
                                              20.0, 1.0) for c in cells}
  kd = sum(weights[k] * v for k, v in per_cell.items()) / sum(weights.values())
  cos = np.sum(_unit(student[:, 2]) * _unit(teacher), axis=-1)
  anchor = np.mean(1 - cos)
  for name, value in per_cell.items():
    np.testing.assert_allclose(float(parts[f"distill/{name}"]), value, rtol=1e-4)
  np.testing.assert_allclose(float(parts["anchor"]), anchor, rtol=1e-5)
  np.testing.assert_allclose(float(loss), 0.5 * kd + 2.0 * anchor, rtol=1e-4)
  # the anchor held on some texts only (loss.distill.anchor_min_tokens): their mean
  rows = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
  _, some = teacher_distillation(
      jnp.float32(student), jnp.float32(teacher), cells=cells,
      layer_index={1: 0, 2: 1, 3: 2}, full_layer=3, weight=0.5, anchor_weight=2.0,
      anchor_rows=jnp.asarray(rows))
  np.testing.assert_allclose(float(some["anchor"]), np.mean((1 - cos)[rows]), rtol=1e-5)
  np.testing.assert_allclose(float(some["distill"]), float(parts["distill"]), rtol=1e-6)
  # and the KL matched on some texts' rows only (loss.distill.kl_min_tokens)
  _, some = teacher_distillation(
      jnp.float32(student), jnp.float32(teacher), cells=cells,
      layer_index={1: 0, 2: 1, 3: 2}, full_layer=3, weight=0.5, kl_rows=jnp.asarray(rows))
  for c in cells:
    want = relational_kd_reference(student[:, c.layer - 1, :c.dim], teacher, 20.0, 1.0,
                                   rows=rows)
    np.testing.assert_allclose(float(some[f"distill/{c.name}"]), want, rtol=1e-4)
    assert abs(want - per_cell[c.name]) > 1e-3 * per_cell[c.name]


def test_the_anchor_skips_short_texts_by_their_token_count(smoke_config):
  """loss.distill.anchor_min_tokens through the step's token counts: the loss of a
  batch equals the anchor's mean over the long texts only, computed by hand from the
  same vectors."""
  config = smoke_config(**{"train.dropout": False})
  config.loss.distill.update(weight=0.0, anchor_weight=1.0, pair_weight=0.0,
                             anchor_min_tokens=8)
  run = train.setup(config, "/nonexistent-unused", devices=jax.devices()[:1])
  _, shardings = train.abstract_state(run)
  state = train.new_state(run, shardings)
  leaves, tree = jax.tree.flatten(state.params)      # a student away from the teacher
  noise = np.random.default_rng(0)
  params = jax.tree.unflatten(tree, [p + 0.05 * noise.normal(size=p.shape).astype(p.dtype)
                                     for p in leaves])
  batch = batch_with_negatives(run, b=8, k=1, t=16, seed=4)
  vecs = train.step.encode_pairs(run.train_model, params, batch, None, deterministic=True)
  extra = train.step.loss_inputs(run.train_model, batch, run.teacher_params())
  loss, _ = run.loss_fn(*vecs, inputs=extra)
  # the full model's vectors and the teacher's (its last layer), anchors, positives,
  # negatives in turn
  s = np.concatenate([np.asarray(v).reshape(-1, *v.shape[-2:])[:, -1] for v in vecs])
  t = np.concatenate([np.asarray(v).reshape(-1, v.shape[-1]) for v in extra.teacher])
  tokens = np.concatenate([batch[k]["attention_mask"].sum(-1).reshape(-1)
                           for k in ("anchor", "positive", "negatives")])
  long = tokens >= 8
  assert 0 < long.sum() < len(long)
  gap = 1 - np.sum(_unit(np.float64(s)) * _unit(np.float64(t)), axis=-1)
  np.testing.assert_allclose(float(loss), gap[long].mean(), rtol=1e-4)
  assert abs(gap[long].mean() - gap.mean()) > 1e-4 * gap.mean()
  # kl_min_tokens reaches the KL the same way: a threshold every text passes changes
  # nothing, one that drops texts changes the loss
  def kl_loss(minimum):
    c = config.copy_and_resolve_references()
    c.loss.distill.update(weight=1.0, anchor_weight=0.0, anchor_min_tokens=0,
                          kl_min_tokens=minimum)
    fn = make_loss(c.loss, num_layers=run.train_model.output_layers,
                   hidden=run.train_model.output_width)
    return float(fn(*vecs, inputs=extra)[0])
  every = kl_loss(0)
  assert kl_loss(1) == pytest.approx(every, rel=1e-6)
  assert abs(kl_loss(8) - every) > 1e-3 * every


def test_the_loss_adds_the_teacher_terms_to_the_pair_objective(smoke_config):
  config = smoke_config()
  rng = np.random.default_rng(2)
  q, d = (jnp.float32(rng.normal(size=(6, 2, 32))) for _ in range(2))
  negs = jnp.float32(rng.normal(size=(6, 2, 2, 32)))
  teacher = tuple(jnp.float32(rng.normal(size=s)) for s in ((6, 32), (6, 32), (6, 2, 32)))
  plain = make_loss(config.loss, num_layers=2, hidden=32)
  pairs, _ = plain(q, d, negs)
  config.loss.distill.update(weight=0.7, anchor_weight=0.3, pair_weight=0.5)
  with_teacher = make_loss(config.loss, num_layers=2, hidden=32)
  loss, aux = with_teacher(q, d, negs, inputs=BatchInputs(teacher=teacher))
  texts = jnp.concatenate([q, d, negs.reshape(12, 2, 32)])
  cells = build_cells("grid", num_layers=2, hidden=32, layers=(1, 2), dims=(8, 16, 32))
  kd, _ = teacher_distillation(texts, jnp.concatenate(
      [teacher[0], teacher[1], teacher[2].reshape(12, 32)]), cells=cells,
      layer_index={1: 0, 2: 1}, full_layer=2, weight=0.7, anchor_weight=0.3)
  np.testing.assert_allclose(float(loss), 0.5 * float(pairs) + float(kd), rtol=1e-5)
  np.testing.assert_allclose(float(aux["loss/pairs"]), float(pairs), rtol=1e-6)
  assert {"loss/distill", "loss/anchor", "loss/distill/L1_D8"} <= set(aux)
  with pytest.raises(ValueError, match="no teacher"):
    with_teacher(q, d, negs)
  config.loss.distill.pair_weight = 0.0            # distillation alone
  alone, aux = make_loss(config.loss, num_layers=2, hidden=32)(q, d, negs, inputs=BatchInputs(teacher=teacher))
  np.testing.assert_allclose(float(alone), float(kd), rtol=1e-5)
  assert "loss/pairs" not in aux


def test_a_batch_weighs_the_pair_and_teacher_terms_of_its_dataset(smoke_config):
  """A mixture's per-dataset weights (data.mixture's pair_weight, teacher_weight) scale
  the pair objective and the teacher terms of that batch alone: the sum of the two
  terms computed apart, each checked above against its own reference."""
  config = smoke_config()
  rng = np.random.default_rng(3)
  q, d = (jnp.float32(rng.normal(size=(6, 2, 32))) for _ in range(2))
  teacher = tuple(jnp.float32(rng.normal(size=(6, 32))) for _ in range(2))
  pairs, _ = make_loss(config.loss, num_layers=2, hidden=32)(q, d)
  config.loss.distill.update(weight=0.7, anchor_weight=0.3, pair_weight=0.5)
  cells = build_cells("grid", num_layers=2, hidden=32, layers=(1, 2), dims=(8, 16, 32))
  kd, _ = teacher_distillation(jnp.concatenate([q, d]), jnp.concatenate(teacher),
                               cells=cells, layer_index={1: 0, 2: 1}, full_layer=2,
                               weight=0.7, anchor_weight=0.3)
  loss_fn = make_loss(config.loss, num_layers=2, hidden=32)
  for pw, tw in ((1.0, 0.0), (0.0, 2.0), (0.25, 3.0)):
    loss, aux = loss_fn(q, d, inputs=BatchInputs(teacher=teacher, pair_weight=jnp.float32(pw),
                                                 teacher_weight=jnp.float32(tw)))
    np.testing.assert_allclose(float(loss), 0.5 * pw * float(pairs) + tw * float(kd),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(aux["loss/pairs"]), float(pairs), rtol=1e-6)


def test_the_step_reads_the_weights_its_batch_carries(smoke_config):
  """Through the jitted, sharded step: a batch whose rows carry teacher_weight 0 trains
  on the pairs alone (its loss is the pair loss), one with pair_weight 0 on the teacher
  alone, at step 0 from the same state."""
  config = smoke_config(**{"train.dropout": False})
  config.loss.distill.update(weight=1.0, anchor_weight=1.0)
  run = train.setup(config, "/nonexistent-unused", devices=jax.devices()[:2])
  _, shardings = train.abstract_state(run)
  step_fn = train.compile_train_step(run, shardings)
  host = batch_with_negatives(run, seed=4)
  del host["negatives"]
  seen = {}
  for pw, tw in ((1.0, 1.0), (1.0, 0.0), (0.0, 2.0)):
    batch = dict(host, pair_weight=np.full(16, pw, np.float32),
                 teacher_weight=np.full(16, tw, np.float32))
    state = train.new_state(run, shardings)
    _, m = step_fn(state, shd.host_batch_to_global(run.mesh, batch))
    seen[pw, tw] = {k: float(v) for k, v in shd.local_value(m).items()}
  full = seen[1.0, 1.0]
  teacher_terms = full["loss/distill"] + full["loss/anchor"]
  assert teacher_terms > 1e-3
  np.testing.assert_allclose(seen[1.0, 0.0]["loss"], full["loss/pairs"], rtol=1e-5)
  np.testing.assert_allclose(seen[0.0, 2.0]["loss"], 2.0 * teacher_terms, rtol=1e-5)
  np.testing.assert_allclose(full["loss"], full["loss/pairs"] + teacher_terms, rtol=1e-5)


@pytest.mark.parametrize("entry, distill, match", [
    ({"pair_weight": -1.0}, True, r"mixture\[1\]: pair_weight=-1.0 must be a finite"),
    ({"teacher_weight": "x"}, True, r"mixture\[1\]: teacher_weight='x' must be"),
    ({"pair_weight": 0.0, "teacher_weight": 0.0}, True, "would train nothing"),
    ({"teacher_weight": 0.0}, False, r"mixture\[1\].*loss.distill has none"),
    ({"pair_weight": 0.0}, False, r"mixture\[1\]: pair_weight=0 without loss.distill")])
def test_bad_mixture_loss_weights_are_named(smoke_config, entry, distill, match):
  from jaxembed.train import inputs
  config = smoke_config()
  if distill:
    config.loss.distill.weight = 1.0
  config.data.mixture = ({"source": "wordnet"}, {"source": "foldoc", **entry})
  with pytest.raises(ConfigError, match=match):
    inputs.mixture_loss_weights(config, inputs.mixture_components(config.data))
  config.data.mixture = ({"source": "wordnet"}, {"source": "foldoc"})
  assert inputs.mixture_loss_weights(
      config, inputs.mixture_components(config.data)) is None


def _distil_steps(config, steps: int = 3):
  """(metrics of each step, the step function, the initial parameters) of `steps`
  training steps of `config` with the teacher terms on, on 2 devices."""
  config.loss.distill.update(weight=1.0, anchor_weight=1.0)
  run = train.setup(config, "/nonexistent-unused", devices=jax.devices()[:2])
  _, shardings = train.abstract_state(run)
  state = train.new_state(run, shardings)
  step_fn = train.compile_train_step(run, shardings)
  initial = jax.tree.map(np.asarray, shd.local_value(state.params))
  metrics = []
  for seed in range(steps):
    batch = shd.host_batch_to_global(run.mesh, batch_with_negatives(run, seed=seed))
    state, m = step_fn(state, batch)
    metrics.append({k: float(v) for k, v in shd.local_value(m).items()})
  return metrics, step_fn, initial


def test_the_step_distils_from_the_frozen_initial_model(smoke_config):
  """At step 0 with dropout off the student is the teacher: the full cell's KL and the
  anchor are 0 while smaller cells' are not; after steps the teacher is unchanged and
  the student has moved away from it."""
  metrics, step_fn, initial = _distil_steps(smoke_config(**{"train.dropout": False}))
  first = metrics[0]
  assert first["loss/anchor"] < 1e-6 and first["loss/distill/L2_D32"] < 1e-6
  assert first["loss/distill/L1_D8"] > 1e-3
  assert metrics[-1]["loss/anchor"] > 1e-6         # the student moved, the teacher not
  teacher = jax.tree.map(np.asarray, shd.local_value(step_fn.teacher_params))
  jax.tree.map(np.testing.assert_array_equal, teacher, initial)
  np.testing.assert_allclose(
      first["loss"], first["loss/pairs"] + first["loss/distill"] + first["loss/anchor"],
      rtol=1e-5)


def test_with_dropout_the_student_starts_away_from_its_teacher(smoke_config):
  """Why the default recipe (exact_teacher) trains with dropout off: with it on (the
  smoke model's BERT drops 10%), the student's full-cell vectors at step 0 already differ
  from the deterministic teacher's, so the anchor and the full cell's KL are above 0
  before any weight has changed and their gradients move the model away from a teacher
  it equals."""
  first = _distil_steps(smoke_config(**{"train.dropout": True}), steps=1)[0][0]
  assert first["loss/anchor"] > 1e-3 and first["loss/distill/L2_D32"] > 1e-4


def test_a_teacher_with_random_parts_is_refused(smoke_config):
  config = smoke_config(**{"model.init": "pretrained", "model.pooling": "latent"})
  config.model.bert_overrides = type(config.model.bert_overrides)()
  config.loss.distill.weight = 1.0
  with pytest.raises(ConfigError, match="loss.distill.*randomly initialised"):
    train.setup(config, "/nonexistent-unused")


@pytest.mark.parametrize("field, value, match", [
    ("weight", -1.0, "loss.distill.weight=-1.0"),
    ("temperature", 0.0, "must be > 0"),
    ("pair_weight", 0.5, "without a teacher")])
def test_bad_distill_settings_are_named(smoke_config, field, value, match):
  config = smoke_config()
  if field != "pair_weight":
    config.loss.distill.weight = 1.0
  config.loss.distill[field] = value
  with pytest.raises(ConfigError, match=match):
    train.setup(config, "/nonexistent-unused")


def _texts_batch(run, anchors, positives):
  """A batch of these texts as the pipeline makes it (both tokenizers)."""
  from jaxembed.data.pipeline import TokenizePairs
  tokenize = TokenizePairs(run.tokenizer, run.config.data.seq_len,
                           teacher_tokenizer=run.teacher_model.tokenizer)
  return tokenize({"anchor": np.array(anchors, object),
                   "positive": np.array(positives, object)})


ANCHORS = ["a dog runs in the park", "the stock market fell sharply today",
           "how to bake sourdough bread", "a small boat on a lake", "open a file",
           "the cat sleeps", "rain is expected tomorrow", "list the files"]
POSITIVES = ["a puppy playing outside", "shares dropped on wall street",
             "a recipe for homemade bread", "sailing on calm water",
             "the open system call opens a file descriptor", "a kitten naps",
             "the forecast says showers", "ls prints a directory's contents"]


MPNET = "weights:all-mpnet-base-v2"


def test_another_model_teaches_through_its_own_tokenizer(smoke_config):
  """loss.distill.teacher names all-mpnet-base-v2 (768 dims, its own vocabulary) for
  the tiny random student on MiniLM's vocabulary (32 dims): the batch carries MPNet's
  tokens of the same texts, the step's teacher vectors are what
  jaxembed.load(MPNet).encode gives for them, and each cell's KL at step 0 is the
  float64 loop's between the student's vectors and those."""
  import jaxembed
  from conftest import require_weights
  config = smoke_config(**{"train.dropout": False})
  config.loss.distill.update(weight=1.0, anchor_weight=0.0, teacher=require_weights(MPNET))
  run = train.setup(config, "/nonexistent-unused", devices=jax.devices()[:2])
  assert run.other_teacher.dim == 768 and run.model.output_width == 32
  batch = _texts_batch(run, ANCHORS, POSITIVES)
  assert not np.array_equal(batch["teacher"]["anchor"]["input_ids"],
                            batch["anchor"]["input_ids"])
  teacher_model = jaxembed.load(MPNET)
  want = {side: teacher_model.encode(texts, normalize=False)
          for side, texts in (("anchor", ANCHORS), ("positive", POSITIVES))}
  inputs = train.step.loss_inputs(run.train_model, batch, run.teacher_params(),
                                  run.other_teacher)
  for got, side in zip(inputs.teacher, ("anchor", "positive")):
    np.testing.assert_allclose(np.asarray(got), want[side], rtol=0, atol=2e-5)
  _, shardings = train.abstract_state(run)
  state = train.new_state(run, shardings)
  vecs = train.step.encode_pairs(run.train_model, state.params, batch, None,
                                 deterministic=True)
  step_fn = train.compile_train_step(run, shardings)
  _, metrics = step_fn(state, shd.host_batch_to_global(run.mesh, batch))
  student = np.concatenate([np.asarray(v) for v in vecs])        # [16, layers, 32]
  teacher = np.concatenate([want["anchor"], want["positive"]])
  for layer, dim in ((1, 8), (2, 32)):
    ref = relational_kd_reference(student[:, layer - 1, :dim], teacher, 20.0, 1.0)
    np.testing.assert_allclose(float(shd.local_value(metrics[f"loss/distill/L{layer}_D{dim}"])),
                               ref, rtol=2e-4)
  assert "loss/anchor" not in metrics


def test_another_teacher_of_another_width_refuses_the_anchor(smoke_config):
  from conftest import MINILM
  config = smoke_config()
  config.loss.distill.update(weight=1.0, anchor_weight=1.0, teacher=MINILM)
  with pytest.raises(ConfigError, match=r"loss.distill.anchor_weight=1.0.*384 dims "
                                        r"against the student's 32"):
    train.setup(config, "/nonexistent-unused")
  config.loss.distill.update(anchor_weight=0.0, teacher="/nonexistent-teacher")
  with pytest.raises(ModelLoadError, match="loss.distill.teacher: /nonexistent-teacher"):
    train.setup(config, "/nonexistent-unused")
