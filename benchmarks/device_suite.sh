#!/usr/bin/env bash
# The one run for a GPU machine. In order: carried wheels (if any), `fastmae doctor`, the
# headline (ViT-B/16 bf16: fastmae vs reference vs Hugging Face), GPU tests, op benchmarks,
# ViT-L/16, the largest batch, and the data benchmark when DALI imports. Every step has a
# time limit, all limits fit in the budget (default 420 s), a failing step is recorded and
# the run goes on. Without a GPU it runs the CPU-safe parts and says why it skipped the rest.
# The checkout is used from PYTHONPATH: nothing is installed, pip is not needed.
#
#   bash benchmarks/device_suite.sh              # writes under $OUT, or ./bench-out
#   FASTMAE_SUITE_SMOKE=1 bash benchmarks/device_suite.sh   # tiny sizes, 3x limits: checks the script
#   FASTMAE_SUITE_DATA=/path/to/imagefolder                 # photos for the data benchmark
#   FASTMAE_SUITE_WHEELS=DIR   carried wheels (default .whl/), installed offline into
#                              FASTMAE_SUITE_SITE (default $TMPDIR/fastmae-suite-site)
#
# Files (at most 8, what the device tool returns): log.txt summary.json doctor.json
# bench-b16.json bench-b16.png bench-l16.json max-batch.json ops.json [data.json]
# (no GPU: log.txt summary.json doctor.json bench-cpu.json bench-cpu.png). GPU test output
# goes to log.txt. summary.json holds the device, the versions, every step's status and
# reason, the headline ratios and the doctor report.
set -u
cd "$(dirname "$0")/.." || exit 1

OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/log.txt"
: > "$LOG"
SMOKE="${FASTMAE_SUITE_SMOKE:-0}"
# Smoke runs check the script, often on a small shared CPU: their step limits are 3x.
SCALE="${FASTMAE_SUITE_LIMIT_SCALE:-$([ "$SMOKE" = "1" ] && echo 3 || echo 1)}"
PY="${PYTHON:-python3}"
BUDGET_S="${FASTMAE_SUITE_BUDGET_S:-420}"
WHEELS="${FASTMAE_SUITE_WHEELS:-$PWD/.whl}"
SITE="${FASTMAE_SUITE_SITE:-${TMPDIR:-/tmp}/fastmae-suite-site}"
START=$(date +%s)
STEPS=$(mktemp "${TMPDIR:-/tmp}/fastmae-suite-steps.XXXXXX") || exit 1
STEP_OUT=$(mktemp "${TMPDIR:-/tmp}/fastmae-suite-out.XXXXXX") || exit 1
trap 'rm -f "$STEPS" "$STEP_OUT"' EXIT
NFAILED=0
# The package from this checkout whatever is installed (fastmae/__init__ maps kernels/ to
# fastmae.kernels); compiled, not interpreted, Triton.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_INTERPRET=0
export MPLBACKEND=Agg
export PYTHONUNBUFFERED=1

log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

# record NAME STATUS SECONDS LIMIT REASON COMMAND: one line for summary.json.
record() {
    local f=() x
    for x in "$@"; do x=${x//$'\t'/ }; f+=("${x//$'\n'/ }"); done
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${f[@]}" >> "$STEPS"
}

skip() {
    log "-- $1 SKIPPED ($2)"
    record "$1" SKIPPED "" "" "$2" ""
}

# step NAME LIMIT_S CMD...: run CMD with a time limit (cut to what is left of the budget),
# its output appended to log.txt; record ok, or FAILED with the reason and the last line
# it printed, and carry on.
step() {
    local name=$1 limit=$(( $2 * SCALE ))
    shift 2
    local left=$(( START + BUDGET_S - $(date +%s) ))
    if [ "$left" -lt 15 ]; then
        skip "$name" "no time left in the ${BUDGET_S}s budget"
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log "== $name (limit ${limit}s): $*"
    local t0 rc secs last
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$STEP_OUT" 2>&1
    rc=$?
    secs=$(( $(date +%s) - t0 ))
    cat "$STEP_OUT" >> "$LOG"
    if [ "$rc" -eq 0 ]; then
        log "-- $name ok (${secs}s)"
        record "$name" ok "$secs" "$limit" "" "$*"
        return 0
    fi
    last=$(grep -v '^[[:space:]]*$' "$STEP_OUT" | tail -n 1 | cut -c1-300)
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        rc="timed out at the ${limit}s limit"
    else
        rc="exit $rc after ${secs}s"
    fi
    log "-- $name FAILED ($rc): $last"
    record "$name" FAILED "$secs" "$limit" "$rc; last output: $last" "$*"
    NFAILED=$(( NFAILED + 1 ))
    return 1
}

# plotted NAME FILE: a bench that ran but drew no picture records the picture as skipped.
plotted() {
    [ -f "$2" ] && return
    if [ "$MPL" = "1" ]; then
        skip "$1-plot" "$(basename "$2") was not written (see log.txt)"
    else
        skip "$1-plot" "matplotlib is not importable here: $(basename "$2") not drawn"
    fi
}

log "fastmae device suite: $(date -u +%Y-%m-%dT%H:%M:%SZ), smoke=$SMOKE, budget=${BUDGET_S}s, out=$OUT"

# ------------------------------------------------------------------ carried wheels
# Small wheels carried in .whl/ (ignored by git), installed offline into a folder of their
# own that goes on PYTHONPATH: nothing is installed into the machine's Python.
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    if step wheels 25 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$SITE" "$WHEELS"/*.whl; then
        export PYTHONPATH="$PWD:$SITE${PYTHONPATH#"$PWD"}"
    fi
else
    skip wheels "no carried wheels in $WHEELS"
fi

# ------------------------------------------------------------------ preflight
step doctor 45 sh -c '"$0" -m fastmae doctor --json > "$1"' "$PY" "$OUT/doctor.json"
if command -v nvidia-smi >/dev/null 2>&1; then
    step nvidia-smi 10 nvidia-smi
else
    skip nvidia-smi "nvidia-smi not found"
fi
FACTS=$("$PY" benchmarks/suite_summary.py facts --doctor "$OUT/doctor.json" 2>>"$LOG")
GPU=0 HF=0 DALI=0 MPL=0 DOCTOR=0
for kv in $FACTS; do
    case "$kv" in GPU=[01]|HF=[01]|DALI=[01]|MPL=[01]|DOCTOR=[01]) eval "$kv" ;; esac
done
log "facts: GPU=$GPU transformers=$HF DALI=$DALI matplotlib=$MPL (from the doctor report: $DOCTOR)"

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
if [ "$HF" = "1" ]; then
    CONTENDERS=fastmae,reference,hf
else
    CONTENDERS=fastmae,reference
    skip hf-contender "transformers is not importable here: benches compare fastmae with the reference only"
fi
COMMON=(--mask-ratio 0.75 --contenders "$CONTENDERS")

# ------------------------------------------------------------------ runs
if [ "$GPU" = "1" ]; then
    # The headline first, so a short budget still yields it: eager fastmae against the
    # baselines. Then the compiled fastmae (whole model and per block) against the reference,
    # in a step of its own, so a slow compile cannot cost the headline.
    step bench-b16 70 "$PY" -m fastmae bench "${B16[@]}" "${COMMON[@]}" --precision bf16 \
        --json "$OUT/bench-b16.json" --plot "$OUT/bench-b16.png" && plotted bench-b16 "$OUT/bench-b16.png"
    step bench-b16-compiled 100 "$PY" -m fastmae bench "${B16[@]}" --mask-ratio 0.75 --precision bf16 \
        --contenders fastmae-compiled,fastmae-compiled-blocks,fastmae,reference \
        --json "$OUT/bench-b16-compiled.json"
    step gpu-tests 45 "$PY" -m pytest -m gpu -q -rfEs tests
    step ops-bench 25 "$PY" -m pytest benchmarks/ --benchmark-only -q \
        --benchmark-json "$OUT/ops.json"
    step bench-l16 30 "$PY" -m fastmae bench "${L16[@]}" "${COMMON[@]}" --precision bf16 \
        --json "$OUT/bench-l16.json"
    step max-batch 40 "$PY" -m fastmae bench "${MAXB[@]}" "${COMMON[@]}" --precision bf16 \
        --max-batch --json "$OUT/max-batch.json"
    if [ "$DALI" != "1" ]; then
        skip data-bench "nvidia.dali is not importable here"
    else
        # Real photographs when FASTMAE_SUITE_DATA names an ImageFolder root; else the
        # built-in synthetic set (64 px JPEGs: decode is cheaper than on photographs).
        DATA="${FASTMAE_SUITE_DATA:-}"
        if [ -z "$DATA" ]; then
            DATA=$(FASTMAE_CACHE="${FASTMAE_CACHE:-/tmp/fastmae-cache}" "$PY" -c \
                "from fastmae.data import builtin_dataset; print(builtin_dataset('train'))" 2>>"$LOG")
        fi
        log "data-bench reads $DATA"
        step data-bench 20 "$PY" benchmarks/bench_data.py --data "$DATA" --batch-size 64 \
            --batches 20 --rounds 2 --json "$OUT/data.json"
    fi
else
    why="no CUDA GPU visible"
    for s in bench-b16 bench-b16-compiled gpu-tests ops-bench bench-l16 max-batch data-bench; do skip "$s" "$why"; done
    step bench-cpu 120 "$PY" -m fastmae bench "${CPU_BENCH[@]}" "${COMMON[@]}" --precision fp32 \
        --device cpu --json "$OUT/bench-cpu.json" --plot "$OUT/bench-cpu.png" \
        && plotted bench-cpu "$OUT/bench-cpu.png"
fi

# ------------------------------------------------------------------ summary
timeout 60 "$PY" benchmarks/suite_summary.py write --steps "$STEPS" --out "$OUT" --smoke "$SMOKE" \
    --budget "$BUDGET_S" --started "$START" 2>&1 | tee -a "$LOG"
[ -f "$OUT/summary.json" ] || { log "summary.json was not written"; NFAILED=$(( NFAILED + 1 )); }
log "done in $(( $(date +%s) - START ))s; $NFAILED failed; files: $(cd "$OUT" && ls | tr '\n' ' ')"
[ "$NFAILED" -eq 0 ]
