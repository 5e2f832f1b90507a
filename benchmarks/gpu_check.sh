#!/usr/bin/env bash
# The GPU checks in one command, on a CUDA machine that has torch but no network (docs/gpu.md):
#
#   bash benchmarks/gpu_check.sh [all|tests|bench] [--full]     # default: all, in at most BUDGET seconds
#
# 1. installs the wheels in wheels/ (benchmarks/make_wheelhouse.sh, made on a connected machine)
#    offline into a private folder put first on PYTHONPATH: the system's packages are never changed;
# 2. `pytest -m gpu` (tests/gpu/test_gpu.py): small and AST-base fine-tunes in bf16, the trunk cache on
#    the GPU, a one-process torchrun member, torch.compile;
# 3. benchmarks/bench_gpu.py on CUDA with AST-base, in what is left of the budget: the warm-up (first step and
#    first evaluation against the model's own first iteration), the model step's samples/s and MFU per batch
#    size, whole epochs against the step, the attention kernel, transfers, evaluation batch, compile. Every
#    figure is printed as one JSON line the moment it is measured; stages that would not fit are skipped.
# Ends with one summary table (also when the benchmark was stopped). Logs and the benchmark's JSON lines go to
# $OUT, else gpu-check-out/. Exits non-zero if a stage failed.
# Settings: BUDGET (235 s in all: 4 minutes with the machine's own start-up aside), WHEELS (wheels),
# PYTHON (python3), TESTS_TIMEOUT (120 s at most). --full: the lever table's profile (10,000 clips, batch to 512;
# give it BUDGET=900). DEVICE=cpu rehearses the script where no GPU is: the same steps on the CPU in float32
# (the GPU tests but AST-base's, the benchmark with the small config), in under 3 minutes on 2 cores.
set -uo pipefail
usage="usage: bash benchmarks/gpu_check.sh [all|tests|bench] [--full]   (settings: see the top of this file)"
# OUT as the caller wrote it, from the caller's folder; the default lives in the repository (git-ignored)
out=${OUT:+$(realpath -m -- "$OUT")}
cd "$(dirname "$0")/.."
out=${out:-$PWD/gpu-check-out}
started=$SECONDS
budget=${BUDGET:-235}
tests_limit=${TESTS_TIMEOUT:-120}
for setting in "BUDGET=$budget" "TESTS_TIMEOUT=$tests_limit"; do
  [[ ${setting#*=} =~ ^[0-9]+$ ]] || { echo "gpu_check: ${setting%%=*} must be whole seconds, got '${setting#*=}'"; exit 2; }
done
budget=$((10#$budget)) tests_limit=$((10#$tests_limit))  # 08 is eight seconds, not an octal error
stage=all
full=()
for arg in "$@"; do
  case $arg in
    --full) full=(--full) ;;
    all|tests|bench) stage=$arg ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg"; echo "$usage"; exit 2 ;;
  esac
done
device=${DEVICE:-cuda}
if [ "$device" = cpu ]; then
  export ASTFT_GPU_TESTS_DEVICE=cpu
  select=(-k "not ast_base")
else
  select=()
fi
mkdir -p "$out" && : > "$out/versions.txt" \
  || { echo "gpu_check: cannot write to OUT=$out (set OUT to a writable folder)"; exit 1; }
rm -f "$out/gpu-tests.log" "$out/gpu-tests.xml" "$out/bench.log" "$out/bench.jsonl"  # no stale stage in the summary
python=${PYTHON:-python3}
wheels=${WHEELS:-wheels}
# The end of the output, which a remote runner keeps: the tests' result and the benchmark's table
summarize() {
  echo "==== gpu_check summary (stage $stage, device $device, $(( SECONDS - started )) s of a ${budget} s budget," \
    "exit $status)"
  [ -f "$out/gpu-tests.log" ] && grep -E "passed|failed|skipped|error|gpu_check:" "$out/gpu-tests.log" | tail -4
  [ -f "$out/bench.log" ] && grep "gpu_check:" "$out/bench.log"
  [ -f "$out/bench.log" ] && grep -q "^{" "$out/bench.log" && "$python" benchmarks/bench_gpu.py --summarize "$out/bench.log"
  return 0
}
site=$(mktemp -d /tmp/astft-site.XXXXXX)
trap 'rm -rf "$site"' EXIT  # also when a stage or the import check stops the script early
# Ctrl-C or a TERM stops the running stage too: `timeout` runs it in its own process group, which the terminal's
# Ctrl-C does not reach, so the signal is passed on to `timeout`, which passes it to the whole group
running=
running_log=
status=0
stop() {
  echo "gpu_check: stopped by a signal"
  [ -n "$running_log" ] && printf "\ngpu_check: stopped by a signal while running\n" >> "$running_log"
  [ -n "$running" ] && kill -TERM "$running" 2>/dev/null && wait "$running" 2>/dev/null
  status=130
  summarize
  exit 130
}
trap stop INT TERM
# run LOG COMMAND...: the command (a `timeout ...`) in the background, so that the trap above can stop it, with
# its output in LOG and followed on the terminal until it ends (tail --pid reads to the end); its exit status
run() {
  local log=$1 rc viewer
  shift
  : > "$log"
  "$@" >> "$log" 2>&1 &
  running=$!
  running_log=$log
  tail -n +1 -s 0.2 -f --pid="$running" "$log" &
  viewer=$!
  wait "$running"
  rc=$?
  wait "$viewer"
  running= running_log=
  return $rc
}

if compgen -G "$wheels/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
    || { echo "gpu_check: installing $wheels/*.whl failed (built for another Python? see docs/gpu.md)"; exit 1; }
fi
# the repository for lib/ (torchrun's ranks start with -m lib.recipes.finetune), then the carried packages
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export GPU_CHECK_DEVICE=$device HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# readable output: no progress bars (tqdm, the hub's, transformers' shard writing), no library chatter
export TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error PYTHONWARNINGS=ignore
unset TORCH_LOGS

# What runs here, and whether lib/ imports: a missing package is named before any test starts.
"$python" - <<'EOF' 2>&1 | tee "$out/versions.txt"
import importlib.metadata
import os
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
if os.environ["GPU_CHECK_DEVICE"] == "cuda" and not cuda:
    sys.exit("gpu_check: no CUDA device visible to torch (driver? CUDA_VISIBLE_DEVICES?); DEVICE=cpu rehearses on a CPU")
print("cuda", torch.version.cuda, torch.cuda.get_device_name() if cuda else "no CUDA device visible",
      f"capability {torch.cuda.get_device_capability()}" if cuda else "")
pyarrow = tuple(int(part) for part in importlib.metadata.version("pyarrow").split(".")[:2])
if pyarrow < (24, 0):
    sys.exit("pyarrow is older than datasets 5.2 needs (>= 24): make the wheelhouse with WITH_PYARROW=1 WITH_TRANSFORMERS=0")
import lib.recipes.finetune, lib.evaluate.evaluation, lib.publish.folder  # noqa: E401,F401 - everything training and the tests import
print("lib imports: ok")
EOF
[ "${PIPESTATUS[0]}" = 0 ] || exit 1

left() { local seconds=$(( budget - (SECONDS - started) )); echo $(( seconds > 0 ? seconds : 0 )); }
if [ "$stage" = all ] || [ "$stage" = tests ]; then
  tests_timeout=$tests_limit
  reserve=10  # the kill grace below
  [ "$stage" = all ] && reserve=110  # the benchmark's least, 90 s, and its margins
  [ $(( $(left) - reserve )) -lt "$tests_timeout" ] && tests_timeout=$(( $(left) - reserve ))
  if [ "$tests_timeout" -lt 30 ]; then
    echo "gpu_check: tests not run: $(( tests_timeout > 0 ? tests_timeout : 0 )) s allowed them (BUDGET, TESTS_TIMEOUT)," \
      "30 s at least needed" | tee "$out/gpu-tests.log"
    status=1
  else
    # -rfE: failures and errors only (-rA would print every passed test's captured DEBUG logs)
    run "$out/gpu-tests.log" timeout -k 10 "$tests_timeout" "$python" -m pytest -m gpu tests/gpu/test_gpu.py \
      ${select[@]+"${select[@]}"} -p no:cacheprovider -q -rfE -o log_level=WARNING --durations=5 \
      --junitxml "$out/gpu-tests.xml"
    rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      echo "gpu_check: tests stopped at their ${tests_timeout} s limit (a loaded machine? raise TESTS_TIMEOUT and BUDGET)" \
        | tee -a "$out/gpu-tests.log"
    fi
    [ "$rc" = 0 ] || status=1
  fi
fi
if [ "$stage" = all ] || [ "$stage" = bench ]; then
  # the benchmark keeps to its budget (its data, then each stage's estimate); the timeout, 15 s later but still
  # inside the check's budget, is a backstop for a hang outside its stages, and the summary has the last 5 s
  bench_budget=$(( $(left) - 20 ))
  if [ "$bench_budget" -lt 20 ]; then
    echo "gpu_check: benchmark not run: $(( bench_budget > 0 ? bench_budget : 0 )) s of the budget left for it, 20 s" \
      "at least needed (raise BUDGET)" | tee "$out/bench.log"
    status=1
  else
    run "$out/bench.log" timeout -k 5 $(( bench_budget + 15 )) "$python" benchmarks/bench_gpu.py --device "$device" \
      --budget "$bench_budget" --no-summary ${full[@]+"${full[@]}"} || status=1
    grep '^{' "$out/bench.log" > "$out/bench.jsonl"
  fi
fi
# last, since a remote runner keeps only the end of the output: the tests' result and the benchmark's table
summarize
rm -rf "$site"
exit $status
