#!/usr/bin/env bash
# The GPU checks in one command, on a CUDA machine that has torch but no network (docs/gpu.md):
#
#   bash benchmarks/gpu_check.sh [all|tests|bench]       # default: all
#
# 1. installs the wheels in wheels/ (benchmarks/make_wheelhouse.sh, made on a connected machine)
#    offline into a private folder put first on PYTHONPATH: the system's packages are never changed;
# 2. `pytest -m gpu` (tests/gpu/test_gpu.py): small and AST-base fine-tunes in bf16, the trunk cache on
#    the GPU, a one-process torchrun member, torch.compile;
# 3. benchmarks/bench_training.py on CUDA with AST-base: the model step's samples/s and MFU, the
#    whole epoch's samples/s and its ratio to the step (the issue's targets: MFU >= 40%, ratio >= 80%).
# Logs and the benchmark's figures (JSON) go to $OUT, else gpu-check-out/. Exits non-zero if a stage failed.
# Settings: WHEELS (wheels), PYTHON (python3), BATCH_SIZE (64), CLIPS (2048), TESTS_TIMEOUT (330 s),
# BENCH_TIMEOUT (330 s). DEVICE=cpu tries the script itself where no GPU is: the same steps on the CPU
# in float32 (the GPU tests but AST-base's, the benchmark with the small config).
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
device=${DEVICE:-cuda}
if [ "$device" = cpu ]; then
  export ASTFT_GPU_TESTS_DEVICE=cpu
  select=(-k "not ast_base")
  bench=(--device cpu --config small --batch-size "${BATCH_SIZE:-8}" --steps 5 --clips "${CLIPS:-64}")
else
  select=()
  bench=(--device cuda --config base --batch-size "${BATCH_SIZE:-64}" --steps 50 --clips "${CLIPS:-2048}")
fi
out=${OUT:-gpu-check-out}
mkdir -p "$out"
python=${PYTHON:-python3}
wheels=${WHEELS:-wheels}
site=$(mktemp -d /tmp/astft-site.XXXXXX)
trap 'rm -rf "$site"' EXIT  # also when a stage or the import check stops the script early

if compgen -G "$wheels/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
    || { echo "gpu_check: installing $wheels/*.whl failed (built for another Python? see docs/gpu.md)"; exit 1; }
fi
# the repository for lib/ (torchrun's ranks start with -m lib.recipes.finetune), then the carried packages
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

# What runs here, and whether lib/ imports: a missing package is named before any test starts.
"$python" - <<'EOF' 2>&1 | tee "$out/versions.txt"
import importlib.metadata
import sys

import torch

print("python", sys.version.split()[0])
for name in ("torch", "transformers", "accelerate", "datasets", "pyarrow", "huggingface-hub", "tokenizers",
             "safetensors", "numpy", "pydantic", "soundfile", "scikit-learn"):
    try:
        print(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
        print(f"{name} MISSING: add it to the wheelhouse (benchmarks/make_wheelhouse.sh)")
cuda = torch.cuda.is_available()
print("cuda", torch.version.cuda, torch.cuda.get_device_name() if cuda else "no CUDA device visible",
      f"capability {torch.cuda.get_device_capability()}" if cuda else "")
pyarrow = tuple(int(part) for part in importlib.metadata.version("pyarrow").split(".")[:2])
if pyarrow < (24, 0):
    sys.exit("pyarrow is older than datasets 5.2 needs (>= 24): make the wheelhouse with WITH_PYARROW=1 WITH_TRANSFORMERS=0")
import lib.recipes.finetune, lib.evaluate.evaluation, lib.publish.folder  # noqa: E401,F401 - everything training and the tests import
print("lib imports: ok")
EOF
[ "${PIPESTATUS[0]}" = 0 ] || exit 1

status=0
if [ "$stage" = all ] || [ "$stage" = tests ]; then
  timeout "${TESTS_TIMEOUT:-330}" "$python" -m pytest -m gpu tests/gpu/test_gpu.py "${select[@]}" -p no:cacheprovider -q \
    -rA --junitxml "$out/gpu-tests.xml" 2>&1 | tee "$out/gpu-tests.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if [ "$stage" = all ] || [ "$stage" = bench ]; then
  timeout "${BENCH_TIMEOUT:-330}" "$python" benchmarks/bench_training.py "${bench[@]}" --epoch-epochs 3 \
    --accuracy-epochs 3 --json 2>&1 | tee "$out/bench.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  grep '^{' "$out/bench.log" | tail -1 > "$out/bench.json"
fi
# last, since a remote runner keeps only the end of the output: the test summary and the table
echo "==== gpu_check summary (stage $stage, exit $status)"
[ -f "$out/gpu-tests.log" ] && grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed" "$out/gpu-tests.log" | tail -12
[ -f "$out/bench.log" ] && grep -v -E "^\{|\{'|it/s|s/it|^\s*$|\[A" "$out/bench.log" | tail -30
rm -rf "$site"
exit $status
