#!/usr/bin/env bash
# The device check, for a machine with a CUDA GPU; about 8 minutes at most, every step bounded.
#
#   bash benchmarks/cuda_check.sh [OUTPUT_DIR]
#
# 1. tests/test_cuda.py: the four networks on CUDA against the CPU in float64, with the PyTorch
#    loops, with the Triton kernels (compiled: TRITON_INTERPRET is unset) and with the loops
#    replayed as CUDA graphs, and each Triton kernel and graph against the CUDA loop it
#    replaces; a skipped test fails this step;
# 2. benchmarks/bench.py, ResNet11, T = 100, B = 16: the project with the Triton kernels
#    (SPIKING_BACKEND=triton) against the authors' loop and the dense-ANN floor, with memory;
# 3. the same project step with the PyTorch loops (SPIKING_BACKEND=torch), and with them
#    replayed as CUDA graphs (SPIKING_BACKEND=graphs);
# 4. benchmarks/max_batch.py: the largest ResNet11 batch at T = 100 (triton backend), starting
#    near the batch that benchmarks/kept_memory.py predicts for this GPU's memory;
# 5. the trainer, a few --synthetic --amp steps at B = 128 under --sync-debug (any host wait in
#    a training step fails it), with the PyTorch loops and with the Triton kernels;
# 6. one torchrun step (one process, NCCL).
# Logs and JSON go to OUTPUT_DIR (default: a new temporary folder); a summary table ends the run,
# naming the backend that really ran each figure. Every step has its own time limit: at most
# about 8 minutes in all. Without a GPU it refuses with one line and exit status 2.
set -u
cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-$(command -v python || command -v python3 || echo python3)}

if ! "$PYTHON" -c 'import torch' >/dev/null 2>&1; then
    echo "error: $PYTHON cannot import torch (set PYTHON to the project's interpreter)" >&2
    exit 2
fi
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
    timeout --kill-after=5 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    if [ "$rc" = 0 ] && [ -n "${NO_SKIPS:-}" ] && grep -qE '[0-9]+ skipped' "$out/$name.log"; then
        rc=skipped
    fi
    case $rc in
        0) status=ok ;;
        skipped) status="failed (tests skipped)" ;;
        124 | 137) status="timed out" ;;
        *) status="failed ($rc)" ;;
    esac
    tail -n 25 "$out/$name.log"
    rows+=("| $name | $status | $((SECONDS - start)) s |")
}

bench=(benchmarks/bench.py --arch resnet11 -T 100 -b 16 --device cuda --repeats 3 --warmup 1)
train=(cifar10_ResNet11.py --synthetic --synthetic-size 384 --amp -b 128 --test-batch-size 128
       --epochs 1 --workers 0 --sync-debug --overwrite)
memory=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_properties(0).total_memory)')
predicted=$("$PYTHON" benchmarks/kept_memory.py --arch resnet11 -T 100 \
    --device-bytes "$memory" --batch-only) || predicted=64
start=$((predicted * 3 / 4 > 16 ? predicted * 3 / 4 : 16))
NO_SKIPS=1 run cuda-tests 90 "$PYTHON" -m pytest tests/test_cuda.py -q -m cuda -rs \
    -p no:cacheprovider
run bench-triton 85 env SPIKING_BACKEND=triton "$PYTHON" "${bench[@]}" \
    --json "$out/bench-triton.json"
run bench-torch 50 env SPIKING_BACKEND=torch "$PYTHON" "${bench[@]}" --variants project \
    --no-memory --json "$out/bench-torch.json"
run bench-graphs 40 env SPIKING_BACKEND=graphs "$PYTHON" "${bench[@]}" --variants project \
    --no-memory --json "$out/bench-graphs.json"
run max-batch 75 env SPIKING_BACKEND=triton "$PYTHON" benchmarks/max_batch.py \
    --arch resnet11 -T 100 --device cuda --start "$start" --limit $((start * 4)) --budget 65 \
    --try-timeout 30
run train-torch 40 env SPIKING_BACKEND=torch "$PYTHON" "${train[@]}" --out-dir "$out/train-torch"
run train-triton 50 env SPIKING_BACKEND=triton "$PYTHON" "${train[@]}" \
    --out-dir "$out/train-triton"
run torchrun 35 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=1 \
    cifar10_ResNet11.py --synthetic --synthetic-size 64 -b 64 --test-batch-size 64 -T 10 \
    --epochs 1 --workers 0 --overwrite --out-dir "$out/torchrun"

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
for run in ("triton", "torch", "graphs"):
    path = out / f"bench-{run}.json"
    if not path.exists():
        continue
    result = json.loads(path.read_text())
    backend = result.get("machine", {}).get("backend") or result.get("backend", "backend unknown")
    print(f"bench-{run}: {backend}")
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
for name in ("train-torch", "train-triton", "torchrun"):
    log = out / f"{name}.log"
    first = next((line for line in log.read_text().splitlines() if "spiking backend" in line),
                 None) if log.exists() else None
    if first:
        print(f"{name}: spiking backend {first.split('spiking backend ', 1)[1].split(',')[0]}")
EOF
