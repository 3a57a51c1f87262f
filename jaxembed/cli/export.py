r"""Exports a trained model, optionally truncated to one (layer, dim) sub-model.

  jaxembed export --workdir=runs/default --out=exported/l4_d128 \
      --layer=4 --dim=128

BERT-family models with a parameter-free pooling become a sentence-transformers
folder (`SentenceTransformer("exported/l4_d128")` loads it as-is); decoder LLMs and
trainable poolers become a Flax folder that `jaxembed.load` reads (--format=flax forces
it for any model); multi-vector (late-interaction) models become a PyLate folder
(`pylate.models.ColBERT("exported/...")`). The folder's README.md is a model card: the query prompt, the
exported cell's evaluation scores before and after training, and the run's config.
"""

from __future__ import annotations

import sys

from absl import app, flags

_DEFINED = False


def define_flags() -> None:
  """Defines this command's flags, once: at import they would clash with the
  other commands' (every module of the package imports together)."""
  global _DEFINED
  if _DEFINED:
    return
  _DEFINED = True
  flags.DEFINE_string("workdir", None, "training workdir (or any path jaxembed.load reads)")
  flags.DEFINE_string("out", None, "folder to write (must not exist or be empty)")
  flags.DEFINE_integer("layer", None, "keep the first LAYER blocks (default: all)")
  flags.DEFINE_integer("dim", None, "keep the first DIM coordinates (default: all)")
  flags.DEFINE_enum("format", "auto", ["auto", "sentence-transformers", "pylate", "flax"],
                    "auto: sentence-transformers (pooled vectors) or PyLate (token "
                    "vectors) when the model allows it, else flax")
  flags.mark_flags_as_required(["workdir", "out"])


FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jaxembed
  from jaxembed.errors import JaxembedError
  from jaxembed.export import export, workdir_card
  try:
    model = jaxembed.load(FLAGS.workdir)
    out = export(model, FLAGS.out, layer=FLAGS.layer, dim=FLAGS.dim, format=FLAGS.format,
                 card=workdir_card(FLAGS.workdir))
  except JaxembedError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {out}")


def run() -> None:
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
