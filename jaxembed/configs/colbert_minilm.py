"""Multi-vector (late-interaction, ColBERT) fine-tuning of all-MiniLM-L6-v2 on the
default job's WordNet and FOLDOC pairs.

  python -m experiments.train --config=configs/colbert_minilm.py --workdir=runs/colbert

Every token gets a 128-wide vector per layer (a linear projection without bias,
normalised), queries marked with [unused0] and expanded with [MASK] tokens to 32,
documents marked with [unused1] with their punctuation skipped (PyLate's ColBERT
defaults); trained with InfoNCE over MaxSim (in-batch negatives, scale 1), evaluated
by exhaustive MaxSim on the retrieval sets (WordNet in domain, the man pages and
docstrings out of domain). STS and classification sets score pooled vectors and are
left out. `jaxembed export` writes a folder PyLate loads.

Arguments (comma-separated after the file name):
  smoke               a tiny random model, seconds (tests)
  matryoshka          token vectors trained at every (layer, token dim) cell of layers
                      {2, 4, 6} x dims {32, 64, 128} from one pass
  crisp=Q:D           CRISP: each query's tokens clustered into Q and each document's
                      into D centroids by k-means in the forward pass (5 Lloyd steps),
                      trained through; e.g. crisp=4:8
  accelerator         2,000 steps of 256 pairs, the full evaluation sets
"""

from jaxembed.configs import common

VARIANTS = ("matryoshka", "smoke,matryoshka", "accelerator", "crisp=4:8",
            "smoke,crisp=2:4")


def get_config(arg=None):
  args = common.parse_arg(arg, smoke=False, matryoshka=False, accelerator=False,
                          crisp="")
  c = common.base_config()
  if args.smoke:
    c = common.smoke(c)
  c.model.multivector.dim = 16 if args.smoke else 128
  c.loss.name = "maxsim"
  c.loss.scale = 1.0                     # ColBERT's scores, unscaled
  c.loss.matryoshka.mode = "none"
  dims = (4, 8, 16) if args.smoke else (32, 64, 128)
  layers = (1, 2) if args.smoke else (2, 4, 6)
  if args.crisp:
    q, d = (int(x) for x in args.crisp.split(":"))
    mv = c.model.multivector
    mv.query_reduce, mv.query_vectors = ("kmeans", q) if q else ("none", 0)
    mv.doc_reduce, mv.doc_vectors = ("kmeans", d) if d else ("none", 0)
  if args.matryoshka:
    c.loss.matryoshka.mode = "grid"
    c.loss.matryoshka.layers, c.loss.matryoshka.dims = layers, dims
  c.data.pack_length = 0                 # queries and documents are marked apart
  c.data.mixture = ({"source": "wordnet", "weight": 2.0},
                    {"source": "foldoc", "weight": 1.0})
  c.eval.layers, c.eval.dims = layers, dims
  for task in ("lee", "simlex", "wordsim", "polarity", "newsgroup"):
    c.eval[task] = False
  if not args.smoke:
    c.eval.max_length = 180 - 1          # PyLate's document_length, less the marker
    c.train.steps = 400
    c.eval.wordnet_queries = c.eval.ood_queries = 500
  if args.accelerator:
    common.study_scale(c, accelerator=True, smoke=False)
  return c
