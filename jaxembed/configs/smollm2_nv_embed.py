"""NV-Embed's two-stage instruction tuning (Lee et al. 2024), scaled to SmolLM2-135M.

  python -m experiments.mine --out=runs/mined/wordnet_negatives.jsonl
  python -m experiments.train --config=configs/smollm2_nv_embed.py --workdir=runs/nv_embed

NV-Embed trains a decoder LLM with its causal mask removed, latent-attention pooling
and LoRA (rank 16, alpha 32, dropout 0.1) in two stages: (1) retrieval data with an
instruction per dataset, contrastive over in-batch *and* hard negatives; (2) a blend of
retrieval and non-retrieval tasks, without in-batch negatives (they are false negatives
for classification and clustering data). Here, on what this machine has:
  stage 1, "retrieval": WordNet (definition -> example) pairs with one mined hard
    negative each (the first command, `experiments/mine.py`), in-batch + hard
    negatives, the instruction "Given a definition, retrieve an example sentence: ";
  stage 2, "blend": the same pairs and negatives scored against their own negatives
    only (`loss.in_batch_negatives=False`), a fresh optimizer at a lower rate.
Each stage trains LoRA on every projection and the latent-attention pooler; a rerun
resumes in either stage (config.stages). The model is bidirectional SmolLM2 with 64
latents (NV-Embed: 512).

Arguments (comma-separated):
  accelerator   2,000 + 1,000 steps of 128 pairs, sequences of 128 tokens, 512 latents
  smoke         a tiny random decoder on SmolLM2's vocabulary (tests; the caller sets
                data.train_file)
"""

from jaxembed.configs import common
from jaxembed.configs.smollm2_pooling import LORA_TARGETS, SMOLLM2, smoke_decoder

VARIANTS = ("accelerator",)
INSTRUCTION = "Given a definition, retrieve an example sentence: "


def get_config(arg=None):
  args = common.parse_arg(arg, accelerator=False, smoke=False)
  c = common.base_config()
  c.model.path = SMOLLM2
  c.model.encoder = "decoder"
  c.model.decoder.attention = "bidirectional"
  c.model.decoder.dtype = "bfloat16"
  c.model.pooling = "latent"
  c.model.pool_heads, c.model.pool_latents = 8, 64
  c.data.source = "file"
  c.data.train_file = "runs/mined/wordnet_negatives.jsonl"
  c.data.query_instruction = INSTRUCTION
  c.data.seq_len = 48
  c.train.batch_size = 16
  c.train.dropout = False
  c.loss.name = "contrastive"
  c.loss.matryoshka.mode = "none"
  c.loss.matryoshka.layers, c.loss.matryoshka.dims = (30,), (576,)
  c.eval.layers, c.eval.dims = (30,), (576,)
  c.eval.wordnet_queries = c.eval.ood_queries = 500
  c.eval.polarity = c.eval.newsgroup = False
  c.optim.lora.rank, c.optim.lora.alpha, c.optim.lora.dropout = 16, 32.0, 0.1
  c.optim.lora.targets = LORA_TARGETS
  c.optim.trainable = ("^pooler/",)
  retrieval = {"name": "retrieval", "train.steps": 200, "optim.learning_rate": 1e-4}
  blend = {"name": "blend", "train.steps": 100, "optim.learning_rate": 5e-5,
           "optim.warmup_steps": 10, "loss.in_batch_negatives": False}
  if args.accelerator:
    c.train.batch_size, c.data.seq_len, c.model.pool_latents = 128, 128, 512
    c.eval.wordnet_queries = c.eval.ood_queries = 0
    retrieval["train.steps"], blend["train.steps"] = 2000, 1000
  if args.smoke:
    c = smoke_decoder(c)
    c.data.source = "file"
    c.optim.lora.rank = 4
    retrieval.update({"train.steps": 6, "optim.learning_rate": 1e-3})
    blend.update({"train.steps": 4, "optim.learning_rate": 5e-4, "optim.warmup_steps": 1})
  c.stages = (retrieval, blend)
  return c
