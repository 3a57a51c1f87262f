"""The installed package stands on its own: a wheel built from the project, installed
in a fresh virtualenv (its dependencies taken from this environment, the source tree
out of reach), validates and builds every config in configs/ as a user's copy of them
would be loaded."""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from conftest import REPO

BUILD_ALL = textwrap.dedent("""
    import glob, importlib, os, sys
    import jaxembed
    from jaxembed import defaults
    from jaxembed.models import abstract_params, build_model, read_model_folder, text_encoder_config
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
        folder = read_model_folder(config.model.path, tokenizer=config.model.tokenizer)
        model = build_model(config, text_encoder_config(config, folder))
        assert abstract_params(model)
        built += 1
    print("BUILT", built)
""")


@pytest.mark.slow
def test_wheel_builds_every_config(tmp_path):
  wheels = tmp_path / "wheels"
  done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                         "-q", "-w", str(wheels), REPO],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  (wheel,) = glob.glob(str(wheels / "jaxembed-*.whl"))
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = str(venv / "bin" / "python")
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
  # The dependencies: this environment's site-packages, added after the venv's own
  # (a path listed in a .pth file is not scanned for .pth files, so the source tree's
  # editable install does not come along).
  with open(os.path.join(site, "deps.pth"), "w") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                         "--target", site, wheel], capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  work = tmp_path / "user"
  shutil.copytree(os.path.join(REPO, "configs"), work / "configs")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
  ran = subprocess.run([python, "-c", BUILD_ALL], cwd=work, capture_output=True,
                       text=True, timeout=600, env=env)
  assert ran.returncode == 0, ran.stderr[-3000:]
  n_configs = len([p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                   if os.path.basename(p) not in ("__init__.py", "common.py")])
  assert int(ran.stdout.split("BUILT")[1]) >= 2 * n_configs
