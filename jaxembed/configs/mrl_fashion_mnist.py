"""MRL reproduction (Kusupati et al. 2022): a ViT classifier on Fashion-MNIST, Matryoshka
vs fixed-feature models, truncation and PCA, at dims 2..64.

  python -m experiments.mrl_fashion_mnist --config=configs/mrl_fashion_mnist.py --out=runs/mrl

Per seed, trains from scratch: MRL (a head on each nested prefix of a 64-dim
representation), MRL-E (one shared head) and a fixed-feature (FF) model per dim (its
representation that wide); the 64-dim FF model is also truncated and reduced with PCA.
Every representation is then scored at every dim it has by a linear probe (logistic
regression) and 1-NN (cosine) on the test split. See experiments/RESULTS.md.

Arguments: smoke (a tiny model, seconds: tests), gpu (a larger ViT and more steps for an
accelerator), long (the redo of experiments/mrl_study.py: 2,500 steps, so that the
narrow fixed-feature models converge; arms MRL and FF at 2, 4, 8 and 64 only, to fit
one seed in 25 minutes on 2 CPU cores).
"""

import ml_collections

from jaxembed.configs import common

KIND = "classification"   # not an experiments.train config: see experiments.mrl_fashion_mnist
VARIANTS = ("gpu", "long")


def get_config(arg=None):
  args = common.parse_arg(arg, smoke=False, gpu=False, long=False)
  c = ml_collections.ConfigDict()
  c.vit = ml_collections.ConfigDict(dict(
      image_size=28, patch_size=7, num_channels=1, hidden_size=64, num_layers=4,
      num_heads=4, intermediate_size=128, layer_norm_eps=1e-6, hidden_dropout=0.0,
      attention_dropout=0.0, initializer_range=0.02, dtype="float32"))
  c.dims = (2, 4, 8, 16, 32, 64)
  c.num_classes = 10
  # MRL and MRL-E, and one FF model per dim.
  c.arms = ("mrl", "mrl_e") + tuple(f"ff{m}" for m in c.dims)
  c.train = ml_collections.ConfigDict(dict(
      steps=500, batch_size=128, learning_rate=2e-3, warmup_steps=50,
      weight_decay=1e-4))
  c.data = ml_collections.ConfigDict()
  c.data.tfds_dir = "~/.cache/jaxembed/tfds"
  c.data.max_train_examples = ml_collections.config_dict.placeholder(int)
  # The probes: fitted on this many training images, scored on the whole test split.
  c.probe = ml_collections.ConfigDict(dict(train_examples=10000, test_examples=10000,
                                           c=1.0))
  c.mesh = ml_collections.ConfigDict(dict(dcn_data=1, data=-1, fsdp=1, tensor=1))
  c.seed = 0
  if args.long:
    # MRL's nested dims stay 2..64; the fixed-feature models the claims compare with
    # are the narrow ones and the widest (which also gives truncation and PCA).
    c.arms = ("mrl", "ff2", "ff4", "ff8", "ff64")
    c.train.steps = 2500
  if args.gpu:
    c.vit.update(patch_size=4, hidden_size=256, num_layers=6, num_heads=8,
                 intermediate_size=1024, dtype="bfloat16")
    c.dims = (4, 8, 16, 32, 64, 128, 256)
    c.arms = ("mrl", "mrl_e") + tuple(f"ff{m}" for m in c.dims)
    c.train.update(steps=20000, batch_size=512, learning_rate=1e-3, warmup_steps=1000)
    c.probe.update(train_examples=60000)
  if args.smoke:
    c.vit.update(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)
    c.dims = (2, 4, 16)
    c.arms = ("mrl", "mrl_e", "ff2", "ff16")
    c.train.update(steps=3, batch_size=16, warmup_steps=1)
    c.probe.update(train_examples=64, test_examples=64)
  return c
