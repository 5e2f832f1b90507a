#!/usr/bin/env bash
# Download, on a machine with internet, the wheels that lib/ needs beyond what a CUDA image with
# torch already holds, for benchmarks/gpu_check.sh to install offline there (docs/gpu.md).
#
#   benchmarks/make_wheelhouse.sh [DIR]          # default DIR: wheels/ in the repository (git-ignored)
#
# Versions are those installed in this project's environment (PYTHON, default .venv/bin/python), so
# the GPU machine gets the set the CPU suite tested. Settings (environment variables):
#   PYTHON_VERSION=3.12      the GPU machine's Python (wheels are chosen for it, never installed here)
#   WITH_TRANSFORMERS=1      also the pinned transformers (a GPU image's own may be older; 13 MB)
#   WITH_PYARROW=0           also pyarrow (55 MB): only for an image whose pyarrow is older than
#                            datasets needs (>= 24); then drop transformers to keep a carried tree
#                            under 64 MiB
# Prefect is never included: lib/ does not import it.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-wheels}
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
py_version=${PYTHON_VERSION:-3.12}

# What lib/ imports that a CUDA PyTorch image usually lacks, with what those need in turn: datasets
# (dill, multiprocess, fsspec at the versions it accepts), soundfile (cffi, pycparser) and pydantic.
packages=(datasets dill multiprocess fsspec soundfile cffi pycparser pydantic pydantic-core annotated-types
          typing-inspection typing-extensions)
[ "${WITH_TRANSFORMERS:-1}" = 1 ] && packages+=(transformers)
[ "${WITH_PYARROW:-0}" = 1 ] && packages+=(pyarrow)

pins=$("$python" - "${packages[@]}" <<'EOF'
import importlib.metadata
import sys

for name in sys.argv[1:]:
    try:
        print(f"{name}=={importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"{name} is not installed in {sys.executable}; install the project (pip install -e .) first")
EOF
)
mkdir -p "$dir"
# pip matches each manylinux tag exactly: name every glibc level a wheel of these packages is built for
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
# shellcheck disable=SC2086 # one requirement per word
"$python" -m pip download --no-deps --only-binary=:all: --python-version "$py_version" --implementation cp \
  "${platforms[@]}" -d "$dir" $pins
echo "wheelhouse $dir for Python $py_version: $(ls "$dir"/*.whl | wc -l) wheels, $(du -sh "$dir" | cut -f1)"
