"""The installed package stands on its own: a wheel built from the project, installed
in a fresh virtualenv (its dependencies taken from this environment, the source tree
out of reach), validates and builds every config as a user's copy of configs/ would be
loaded; its `jaxembed` console script trains a packaged config's smoke run and exports
it, and `python -m jaxembed` is the same program."""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from conftest import REPO, user_env

pytestmark = pytest.mark.slow

BUILD_ALL = textwrap.dedent("""
    import glob, importlib, os, sys
    import jaxembed
    from jaxembed import defaults
    from jaxembed.models import abstract_params, build_model, read_model_folder, text_encoder_config
    from jaxembed.models.loading import weights_cache
    assert os.path.realpath(jaxembed.__file__).startswith(os.path.realpath(sys.prefix)), jaxembed.__file__
    built = 0
    for path in sorted(glob.glob("configs/*.py")):
      name = os.path.basename(path)[:-3]
      if name in ("__init__", "common"):
        continue
      module = importlib.import_module(f"configs.{name}")
      for arg in (None, "smoke", *getattr(module, "VARIANTS", ())):
        config = module.get_config(arg)
        if getattr(module, "KIND", "") == "classification":   # e.g. the MRL reproduction
          import jax
          from jaxembed.train import classify
          for arm in config.arms:
            m = classify.make_classifier(config, arm)
            assert jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), *m.example_inputs()))
          built += 1
          continue
        if getattr(module, "KIND", "") == "free_embedding":   # LIMIT's search: no model
          from jaxembed.train import free_embedding
          assert all(free_embedding.Search(int(d)).lower(5) for d in config.dims[:1])
          built += 1
          continue
        defaults.check_fields(config)
        if config.model.path.startswith("weights:") and not os.path.isdir(
            os.path.join(weights_cache(), config.model.path.split(":")[1])):
          built += 1                                   # not fetched here: checked only
          continue
        folder = read_model_folder(config.model.path, tokenizer=config.model.tokenizer)
        model = build_model(config, text_encoder_config(config, folder), folder)
        assert abstract_params(model)
        built += 1
    print("BUILT", built)
""")


def _run(args, cwd, timeout=600):
  env = {k: v for k, v in user_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                        env=env)
  if done.returncode != 0:   # the whole output: an assert's repr would elide the middle
    pytest.fail(f"{' '.join(map(str, args))} exited {done.returncode}\n"
                f"--- stdout ---\n{done.stdout[-4000:]}\n--- stderr ---\n{done.stderr[-8000:]}",
                pytrace=False)
  return done


def _project_files(dest):
  """Copies the project's own files (git's tracked and untracked-but-not-ignored ones;
  without git, the tree less its environment and build outputs) to `dest`: the wheel is
  built from that copy, so setuptools writes its build/ and egg-info there instead of
  into a tree the other test workers are importing from and writing to."""
  try:
    listed = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, text=True)
  except FileNotFoundError:           # no git on this machine
    listed = None
  if listed is None or listed.returncode != 0:
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
        ".venv", ".git", ".pytest_cache", "build", "dist", "*.egg-info", "__pycache__",
        "runs", "workdirs"))
    return
  for rel in filter(None, listed.stdout.split("\0")):
    src = os.path.join(REPO, rel)
    if os.path.isfile(src):           # a file deleted but not yet committed is skipped
      os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
      shutil.copy2(src, os.path.join(dest, rel))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  root = tmp_path_factory.mktemp("wheel")
  source = root / "source"
  _project_files(source)
  _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", str(root / "dist"), str(source)], cwd=root)
  wheel = glob.glob(str(root / "dist" / "jaxembed-*.whl"))
  assert len(wheel) == 1, wheel
  venv = root / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
  python = str(venv / "bin" / "python")
  site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
              cwd=root).stdout.strip()
  # The dependencies: this environment's site-packages, added after the venv's own
  # (a path listed in a .pth file is not scanned for .pth files, so the source tree's
  # editable install does not come along).
  with open(os.path.join(site, "deps.pth"), "w") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
        wheel[0]], cwd=root)
  return venv


def test_wheel_builds_every_config(installed, tmp_path):
  work = tmp_path / "user"
  shutil.copytree(os.path.join(REPO, "configs"), work / "configs")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
  ran = subprocess.run([str(installed / "bin" / "python"), "-c", BUILD_ALL], cwd=work,
                       capture_output=True, text=True, timeout=600, env=env)
  assert ran.returncode == 0, ran.stderr[-3000:]
  n_configs = len([p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                   if os.path.basename(p) not in ("__init__.py", "common.py")])
  assert int(ran.stdout.split("BUILT")[1]) >= 2 * n_configs


def test_the_wheel_holds_the_configs_and_the_console_script(installed, tmp_path):
  where = _run([str(installed / "bin" / "python"), "-c",
                "import jaxembed, jaxembed.configs; print(jaxembed.__file__)"],
               cwd=tmp_path).stdout.strip()
  assert where.startswith(str(installed)) and not where.startswith(REPO), where
  listed = _run([str(installed / "bin" / "jaxembed"), "configs"], cwd=tmp_path).stdout.split()
  assert {"minilm_wordnet_2d", "ood_ablation", "mrl_fashion_mnist"} <= set(listed)
  assert "common" not in listed
  same = _run([str(installed / "bin" / "python"), "-m", "jaxembed", "configs"], cwd=tmp_path)
  assert same.stdout.split() == listed
  bad = subprocess.run([str(installed / "bin" / "jaxembed"), "fly"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and "error: unknown command 'fly'" in bad.stderr


def test_a_packaged_smoke_config_trains_and_exports_from_the_wheel(installed, tmp_path,
                                                                    tfds_dir):
  work, out = tmp_path / "run", tmp_path / "exported"
  _run([str(installed / "bin" / "jaxembed"), "train",
        "--config=ood_ablation:smoke,arm=pairs", f"--workdir={work}",
        f"--config.data.tfds_dir={tfds_dir}", "--config.train.steps=4",
        "--config.eval.before=False"], cwd=tmp_path)
  assert (work / "metrics.json").exists()
  _run([str(installed / "bin" / "jaxembed"), "export", f"--workdir={work}", f"--out={out}",
        "--layer=2", "--dim=32"], cwd=tmp_path)
  shape = _run([str(installed / "bin" / "python"), "-c",
                f"import jaxembed; print(jaxembed.load({str(out)!r}).encode(['a b']).shape)"],
               cwd=tmp_path).stdout.strip()
  assert shape == "(1, 32)"
