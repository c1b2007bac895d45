#!/usr/bin/env bash
# The one run for a GPU machine: versions, GPU tests, op benchmarks, `fastmae bench`
# (ViT-B/16 and ViT-L/16, fastmae vs reference vs Hugging Face, largest batch) and the
# data-loading benchmark when DALI is importable. Finishes within ~7 minutes: every
# step has a time limit and the whole run a deadline; a failing step is recorded and
# the run goes on. Without a GPU it runs the CPU-safe parts and says what it skipped.
#
#   bash benchmarks/device_suite.sh              # writes under $OUT, or ./bench-out
#   FASTMAE_SUITE_SMOKE=1 bash benchmarks/device_suite.sh   # tiny sizes: checks the script
#   FASTMAE_SUITE_DATA=/path/to/imagefolder                 # photos for the data benchmark
#
# Files (at most 8): log.txt gpu-tests.txt ops.json bench-b16.json bench-b16.png
# bench-l16.json max-batch.json data.json   (no GPU: log.txt bench-cpu.json bench-cpu.png)
set -u
cd "$(dirname "$0")/.." || exit 1

OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT" || exit 1
LOG="$OUT/log.txt"
: > "$LOG"
SMOKE="${FASTMAE_SUITE_SMOKE:-0}"
PY="${PYTHON:-python3}"
BUDGET_S="${FASTMAE_SUITE_BUDGET_S:-400}"
START=$(date +%s)
FAILED=()
SKIPPED=()
# The package from this checkout whatever is installed; compiled (not interpreted) Triton.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_INTERPRET=0
export MPLBACKEND=Agg

log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

# step NAME LIMIT_S OUTFILE CMD...: run CMD with a time limit (cut to what is left of the
# budget), its output appended to OUTFILE; record a failure or timeout and carry on.
step() {
    local name=$1 limit=$2 out=$3
    shift 3
    local left=$(( START + BUDGET_S - $(date +%s) ))
    if [ "$left" -lt 15 ]; then
        log "-- $name SKIPPED (no time left in the ${BUDGET_S}s budget)"
        SKIPPED+=("$name")
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log "== $name (limit ${limit}s): $*"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >>"$out" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        log "-- $name ok ($(( $(date +%s) - t0 ))s)"
    else
        [ "$rc" -eq 124 ] && rc="timed out" || rc="exit $rc"
        log "-- $name FAILED ($rc after $(( $(date +%s) - t0 ))s; output in $(basename "$out"))"
        FAILED+=("$name")
    fi
}

skip() { log "-- $1 SKIPPED ($2)"; SKIPPED+=("$1"); }

# ------------------------------------------------------------------ versions
log "fastmae device suite: $(date -u +%Y-%m-%dT%H:%M:%SZ), smoke=$SMOKE, out=$OUT"
if command -v nvidia-smi >/dev/null 2>&1; then
    step nvidia-smi 20 "$LOG" nvidia-smi
else
    skip nvidia-smi "not found"
fi
step versions 60 "$LOG" "$PY" -c "
import json, torch
from fastmae.bench.harness import device_name, versions
dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
print(json.dumps({'device': device_name(dev), 'cuda_available': torch.cuda.is_available(),
                  'versions': versions()}, indent=1))"

if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    GPU=1
else
    GPU=0
fi

# ------------------------------------------------------------------ sizes
if [ "$SMOKE" = "1" ]; then
    B16=(--model mae_vit_tiny_patch16 --img-size 32 --batch-size 2 --steps 1 --warmup 1 --rounds 1)
    L16=("${B16[@]}")
    MAXB=(--model mae_vit_tiny_patch16 --img-size 32 --batch-size 64 --steps 1 --warmup 1 --rounds 1)
    CPU_BENCH=("${B16[@]}" --threads 1)
else
    B16=(--model mae_vit_base_patch16 --img-size 224 --batch-size 256 --steps 10 --warmup 5 --rounds 3)
    L16=(--model mae_vit_large_patch16 --img-size 224 --batch-size 128 --steps 5 --warmup 3 --rounds 2)
    MAXB=(--model mae_vit_base_patch16 --img-size 224 --batch-size 256 --steps 2 --warmup 1 --rounds 1)
    CPU_BENCH=(--model mae_vit_tiny_patch16 --img-size 64 --batch-size 8 --steps 3 --warmup 1 --rounds 2)
fi
COMMON=(--mask-ratio 0.75 --contenders fastmae,reference,hf)

# ------------------------------------------------------------------ GPU runs
if [ "$GPU" = "1" ]; then
    if [ "$SMOKE" = "1" ]; then
        skip install "smoke run: the checkout is used through PYTHONPATH"
    else
        step install 90 "$LOG" "$PY" -m pip install -e . --no-deps --no-build-isolation
    fi
    # The headline first, so a short budget still yields it.
    step bench-b16 120 "$LOG" "$PY" -m fastmae bench "${B16[@]}" "${COMMON[@]}" --precision bf16 \
        --json "$OUT/bench-b16.json" --plot "$OUT/bench-b16.png"
    step gpu-tests 120 "$OUT/gpu-tests.txt" "$PY" -m pytest -m gpu -q -rfEs tests
    step ops-bench 90 "$LOG" "$PY" -m pytest benchmarks/ --benchmark-only -q \
        --benchmark-json "$OUT/ops.json"
    step bench-l16 90 "$LOG" "$PY" -m fastmae bench "${L16[@]}" "${COMMON[@]}" --precision bf16 \
        --json "$OUT/bench-l16.json"
    step max-batch 150 "$LOG" "$PY" -m fastmae bench "${MAXB[@]}" "${COMMON[@]}" --precision bf16 \
        --max-batch --json "$OUT/max-batch.json"
    if [ ! -f benchmarks/bench_data.py ]; then
        skip data-bench "benchmarks/bench_data.py not in this checkout"
    elif "$PY" -c "import nvidia.dali" >/dev/null 2>&1; then
        # Real photographs when FASTMAE_SUITE_DATA names an ImageFolder root; else the
        # built-in synthetic set (64 px JPEGs: decode is cheaper than on photographs).
        DATA="${FASTMAE_SUITE_DATA:-}"
        if [ -z "$DATA" ]; then
            DATA=$(FASTMAE_CACHE="${FASTMAE_CACHE:-/tmp/fastmae-cache}" "$PY" -c \
                "from fastmae.data import builtin_dataset; print(builtin_dataset('train'))" 2>>"$LOG")
        fi
        log "data-bench reads $DATA"
        step data-bench 60 "$LOG" "$PY" benchmarks/bench_data.py --data "$DATA" --batch-size 64 \
            --batches 20 --rounds 2 --json "$OUT/data.json"
    else
        skip data-bench "nvidia.dali is not importable here"
    fi
else
    log "no CUDA GPU visible: GPU tests, op benchmarks, GPU benches, --max-batch and the data benchmark are SKIPPED"
    SKIPPED+=(install gpu-tests ops-bench bench-b16 bench-l16 max-batch data-bench)
    step bench-cpu 120 "$LOG" "$PY" -m fastmae bench "${CPU_BENCH[@]}" "${COMMON[@]}" --precision fp32 \
        --device cpu --json "$OUT/bench-cpu.json" --plot "$OUT/bench-cpu.png"
fi

# ------------------------------------------------------------------ summary
log "done in $(( $(date +%s) - START ))s; failed: ${FAILED[*]:-none}; skipped: ${SKIPPED[*]:-none}"
log "files: $(cd "$OUT" && ls | tr '\n' ' ')"
[ "${#FAILED[@]}" -eq 0 ]
