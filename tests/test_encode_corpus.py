"""`jaxembed encode` / `python -m experiments.encode`: a corpus embedded in shards
gives, row for row in input order, what `encode` gives; a run killed mid-way and rerun
gives exactly the one-shot result; a rerun with other settings is refused; JSONL
input reads its text field, and a bad line is named."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxembed
from conftest import MINILM, REPO, user_env, xla_flags

pytestmark = pytest.mark.slow

WORDS = ("river", "engine", "quantum", "bread", "violin", "harbour", "glacier", "ledger")


def corpus(n: int) -> list[str]:
  rng = np.random.default_rng(0)
  return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 30)))) + f" {i}"
          for i in range(n)]


def encode_args(inp, out, *extra):
  return [sys.executable, "-m", "experiments.encode", f"--model={MINILM}", f"--input={inp}",
          f"--out={out}", "--layer=2", "--dim=64", "--shard_size=100", *extra]


def run(args, timeout=600):
  return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                        env=user_env())


def test_shards_join_into_the_rows_encode_gives(tmp_path):
  texts = corpus(450)
  (tmp_path / "c.txt").write_text("\n".join(texts) + "\n")
  done = run(encode_args(tmp_path / "c.txt", tmp_path / "out"))
  assert done.returncode == 0, done.stderr[-3000:]
  got = np.load(tmp_path / "out" / "embeddings.npy", mmap_mode="r")
  want = jaxembed.load(MINILM).encode(texts, layer=2, dim=64)
  assert got.shape == (450, 64) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-5)
  meta = json.loads((tmp_path / "out" / "meta.json").read_text())
  assert (meta["count"], meta["layer"], meta["dim"], meta["dtype"]) == (450, 2, 64, "float32")
  assert not os.listdir(tmp_path / "out" / "shards")      # joined, then removed
  again = run(encode_args(tmp_path / "c.txt", tmp_path / "out"))   # complete: no work
  assert again.returncode == 0 and "encode:" not in again.stderr
  other = run(encode_args(tmp_path / "c.txt", tmp_path / "out", "--prompt_name=query"))
  assert other.returncode == 2
  assert "holds the work of another run (prompt_name differ)" in other.stderr


def test_two_processes_share_the_shards_and_join_them(tmp_path):
  """Two processes joined by jax.distributed (gloo on 127.0.0.1, two CPU devices
  each): process 0 encodes shards 0, 2, 4 and process 1 shards 1, 3; process 0 joins
  them into the rows one process gives."""
  texts = corpus(450)
  (tmp_path / "c.txt").write_text("\n".join(texts) + "\n")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = user_env({"XLA_FLAGS": xla_flags(2)})
  procs = [subprocess.Popen(
      encode_args(tmp_path / "c.txt", tmp_path / "out", f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={i}"),
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  # Each process's progress bar counts its own shards' texts: 100 + 100 + 50, 100 + 100.
  assert "250/250" in outs[0][1] and "200/200" in outs[1][1], (outs[0][1][-500:],
                                                               outs[1][1][-500:])
  got = np.load(tmp_path / "out" / "embeddings.npy")
  want = jaxembed.load(MINILM).encode(texts, layer=2, dim=64)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert not os.listdir(tmp_path / "out" / "shards")


def test_a_killed_run_resumes_to_the_one_shot_result(tmp_path):
  texts = corpus(3000)
  (tmp_path / "c.txt").write_text("\n".join(texts) + "\n")
  one_shot = run(encode_args(tmp_path / "c.txt", tmp_path / "once", "--batch_size=16"))
  assert one_shot.returncode == 0, one_shot.stderr[-3000:]
  proc = subprocess.Popen(encode_args(tmp_path / "c.txt", tmp_path / "killed",
                                      "--batch_size=16"), cwd=REPO, env=user_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  shards = tmp_path / "killed" / "shards"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and (
      not shards.exists() or len([f for f in os.listdir(shards) if f.endswith(".npy")]) < 3):
    time.sleep(0.05)
  assert proc.poll() is None, "finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  written = sorted(f for f in os.listdir(shards) if f.endswith(".npy"))
  assert 3 <= len(written) < 30, written
  again = run(encode_args(tmp_path / "c.txt", tmp_path / "killed", "--batch_size=16"))
  assert again.returncode == 0, again.stderr[-3000:]
  a = np.load(tmp_path / "once" / "embeddings.npy")
  b = np.load(tmp_path / "killed" / "embeddings.npy")
  assert a.shape == b.shape == (3000, 64)
  np.testing.assert_array_equal(a, b)
  assert not [f for f in os.listdir(tmp_path / "killed") if ".tmp" in f]


def test_jsonl_reads_its_field_and_names_a_bad_line(tmp_path):
  texts = corpus(30)
  (tmp_path / "c.jsonl").write_text("".join(json.dumps({"id": i, "body": t}) + "\n"
                                            for i, t in enumerate(texts)))
  done = run(encode_args(tmp_path / "c.jsonl", tmp_path / "out", "--text_field=body"))
  assert done.returncode == 0, done.stderr[-3000:]
  got = np.load(tmp_path / "out" / "embeddings.npy")
  np.testing.assert_allclose(got, jaxembed.load(MINILM).encode(texts, layer=2, dim=64),
                             atol=1e-5)
  bad = run(encode_args(tmp_path / "c.jsonl", tmp_path / "bad"))      # field 'text'
  assert bad.returncode == 2
  assert "c.jsonl:1: no string field 'text' (set --text_field; the line has ['body', 'id'])" \
      in bad.stderr


@pytest.mark.parametrize("kind", ["flat", "binary"])
def test_an_index_is_built_beside_the_embeddings(tmp_path, kind):
  faiss = pytest.importorskip("faiss")
  texts = corpus(40)
  (tmp_path / "c.txt").write_text("\n".join(texts) + "\n")
  done = run(encode_args(tmp_path / "c.txt", tmp_path / "out", f"--index={kind}"))
  assert done.returncode == 0, done.stderr[-3000:]
  vecs = np.load(tmp_path / "out" / "embeddings.npy")
  path = str(tmp_path / "out" / "index.faiss")
  if kind == "flat":
    index = faiss.read_index(path)
    _, found = index.search(vecs, 1)
  else:
    index = faiss.read_index_binary(path)
    _, found = index.search(np.packbits(vecs > 0, axis=-1), 1)
  assert index.ntotal == 40
  # each vector finds itself (binary codes may tie: then an identical code)
  hit = found[:, 0] == np.arange(40)
  if kind == "binary":
    codes = np.packbits(vecs > 0, axis=-1)
    hit |= (codes[found[:, 0]] == codes).all(-1)
  assert hit.all()
  small = run(encode_args(tmp_path / "c.txt", tmp_path / "pq", "--index=ivf_pq"))
  assert small.returncode == 2 and "--index=ivf_pq trains its quantisers" in small.stderr
