#!/usr/bin/env bash
# The device check, for a machine with a CUDA GPU; about 8 minutes at most, every step bounded.
#
#   bash benchmarks/cuda_check.sh [OUTPUT_DIR]
#
# 1. tests/test_cuda.py: the four networks on CUDA against the CPU in float64, with the PyTorch
#    loops and with the Triton kernels (compiled: TRITON_INTERPRET is unset), and each Triton
#    kernel against the CUDA loop it replaces;
# 2. benchmarks/bench.py, ResNet11, T = 100, B = 16: the project with the Triton kernels
#    (SPIKING_BACKEND=triton) against the authors' loop and the dense-ANN floor, with memory;
# 3. the same project step with the PyTorch loops (SPIKING_BACKEND=torch);
# 4. benchmarks/max_batch.py: the largest ResNet11 batch at T = 100 (triton backend).
# Logs and JSON go to OUTPUT_DIR (default: a new temporary folder); a summary table ends the run.
# Without a GPU it refuses with one line and exit status 2.
set -u
cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python}

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
        >/dev/null 2>&1; then
    echo "error: no CUDA GPU here (torch.cuda.is_available() is False): this check needs one" >&2
    exit 2
fi

out=${1:-$(mktemp -d -t cuda_check.XXXXXX)}
mkdir -p "$out" || exit 2
unset TRITON_INTERPRET
rows=()

# run NAME SECONDS COMMAND...: the command under a time limit, its log in $out/NAME.log
run() {
    local name=$1 limit=$2 start=$SECONDS status rc
    shift 2
    echo "== $name (at most $limit s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="timed out" ;;
        *) status="failed ($rc)" ;;
    esac
    tail -n 25 "$out/$name.log"
    rows+=("| $name | $status | $((SECONDS - start)) s |")
}

bench=(benchmarks/bench.py --arch resnet11 -T 100 -b 16 --device cuda --repeats 3 --warmup 1)
run cuda-tests 120 "$PYTHON" -m pytest tests/test_cuda.py -q -m cuda -p no:cacheprovider
run bench-triton 130 env SPIKING_BACKEND=triton "$PYTHON" "${bench[@]}" \
    --json "$out/bench-triton.json"
run bench-torch 80 env SPIKING_BACKEND=torch "$PYTHON" "${bench[@]}" --variants project \
    --no-memory --json "$out/bench-torch.json"
run max-batch 150 env SPIKING_BACKEND=triton "$PYTHON" benchmarks/max_batch.py \
    --arch resnet11 -T 100 --device cuda --start 16 --budget 135 --try-timeout 45

echo
echo "== summary ($("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name())'), logs in $out)"
echo "| step | result | seconds |"
echo "|---|---|---:|"
printf '%s\n' "${rows[@]}"
"$PYTHON" - "$out" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = []
for run in ("triton", "torch"):
    path = out / f"bench-{run}.json"
    if not path.exists():
        continue
    result = json.loads(path.read_text())
    for variant, phases in result["time"].items():
        name = f"project ({run})" if variant == "project" else variant
        memory = (result.get("memory") or {}).get(variant)
        rows.append((name, phases["train"]["median"], phases["eval"]["median"],
                     memory["increment"] / 2**30 if memory else None))
if rows:
    print("\nResNet11, T = 100, B = 16 (medians of 3 steps)")
    print("| variant | train ms | eval ms | train memory GiB |")
    print("|---|---:|---:|---:|")
    for name, train, evaluation, memory in rows:
        print(f"| {name} | {train * 1e3:.1f} | {evaluation * 1e3:.1f} | "
              f"{'' if memory is None else f'{memory:.2f}'} |")
    times = {name: train for name, train, _, _ in rows}
    fused = times.get("project (triton)")
    for other in ("authors", "ann", "project (torch)"):
        if fused and other in times:
            print(f"training step, project (triton) / {other}: {fused / times[other]:.3f}")
log = out / "max-batch.log"
if log.exists():
    last = [line for line in log.read_text().splitlines() if line.startswith("largest batch")]
    print(last[-1] if last else "largest batch: not found (see max-batch.log)")
EOF
