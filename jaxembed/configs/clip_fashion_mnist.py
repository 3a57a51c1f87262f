"""CLIP / SigLIP two-tower training on Fashion-MNIST (images) and class captions.

  python -m experiments.train --config=configs/clip_fashion_mnist.py --workdir=runs/clip

An image tower (a small ViT, 7x7 patches of 4x4 pixels, [CLS] or MAP pooling, trained
from scratch) and a text tower (all-MiniLM-L6-v2, mean pooling) are projected to a
64-dim joint space with Matryoshka dims {16, 32, 64}. Captions are "a photo of a
{class}." and four other templates; a batch never holds a class twice (its caption
would be a false negative), so batches are at most 10. Evaluated by zero-shot
classification of 1,000 test images (the class prompts' mean embedding per class).

Arguments:
  smoke            tiny random towers, seconds (tests)
  loss=clip        symmetric InfoNCE with a learnable temperature (Radford et al. 2021)
  loss=siglip      sigmoid loss with learnable temperature and bias (Zhai et al. 2023)
  pooling=map      the image tower pools with a MAP head instead of [CLS]
  positives=class  uniform batches of any size, classes repeating; every caption of an
                   image's class is its positive (CLIP: symmetric multi-positive
                   InfoNCE; SigLIP: z = +1 for every same-class pair)
  text=small       a 2-layer, 128-wide text tower from scratch (MiniLM's vocabulary)
                   instead of pretrained all-MiniLM-L6-v2: ~10x cheaper steps
  batch=N          the batch size (at most 10 unless positives=class)
  steps=N          training steps
"""

from jaxembed.configs import common

# The last two: the SigLIP-vs-CLIP sweep's larger variant for an accelerator (pretrained
# MiniLM text tower, batches of 1,024, 5,000 steps), one per loss.
VARIANTS = ("loss=siglip", "smoke,loss=siglip", "smoke,pooling=map",
            "positives=class,batch=128", "loss=siglip,positives=class,batch=128",
            "positives=class,batch=1024,steps=5000",
            "loss=siglip,positives=class,batch=1024,steps=5000")


def get_config(arg=None):
  args = common.parse_arg(arg, smoke=False, loss="clip", pooling="cls", positives="pair",
                          text="minilm", batch=0, steps=0)
  c = common.base_config()
  c.model.encoder = "two_tower"
  c.model.two_tower.towers = "image_text"
  c.model.two_tower.image_pooling = args.pooling
  c.model.two_tower.embed_dim = 64
  c.model.pool_heads = 4
  c.data.source = "fashion_mnist"
  c.data.seq_len = 16
  if args.loss == "clip":
    c.loss.name = "info_nce"
    c.loss.symmetric = True
  elif args.loss == "siglip":
    c.loss.name = "sigmoid"
  else:
    raise ValueError(f"loss={args.loss!r}; valid: clip, siglip")
  if args.positives == "class":
    c.data.distinct_classes = False
    if args.loss == "clip":
      c.loss.name = "multi_positive_info_nce"
  elif args.positives != "pair":
    raise ValueError(f"positives={args.positives!r}; valid: pair, class")
  c.loss.learnable_temperature = True
  c.loss.scale = 10.0
  c.loss.matryoshka.mode = "mrl"
  c.loss.matryoshka.layers = (1,)
  c.loss.matryoshka.dims = (16, 32, 64)
  c.optim.learning_rate = 3e-4
  c.optim.warmup_steps = 30
  c.train.steps = 300
  c.train.batch_size = 10
  c.train.checkpoint_every = 100
  c.eval.layers = (1,)
  c.eval.dims = (16, 32, 64)
  c.eval.batch_size = 100
  c.eval.max_length = 16
  c.eval.wordnet_queries = 0
  c.eval.lee = c.eval.simlex = c.eval.wordsim = False
  c.eval.polarity = c.eval.newsgroup = False
  if args.smoke:
    c.model.init = "random"
    c.model.bert_overrides = common.ml_collections.ConfigDict(dict(
        num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64))
    c.model.vit.update(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                       patch_size=7)
    c.model.two_tower.embed_dim = 32
    c.loss.matryoshka.dims = (8, 16, 32)
    c.eval.dims = (8, 16, 32)
    c.data.max_train_examples = 2000
    c.train.steps = 20
    c.optim.warmup_steps = 2
    c.train.batch_size = 8
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.eval.images = 200
  if args.text == "small" and not args.smoke:
    c.model.init = "random"
    c.model.bert_overrides = common.ml_collections.ConfigDict(dict(
        num_layers=2, hidden_size=128, num_heads=4, intermediate_size=256))
  elif args.text not in ("minilm", "small"):
    raise ValueError(f"text={args.text!r}; valid: minilm, small")
  if args.batch:
    c.train.batch_size = args.batch
  if args.steps:
    c.train.steps = args.steps
  return c
