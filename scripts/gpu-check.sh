#!/usr/bin/env bash
# The GPU check, in one command, for a node with NVIDIA (or AMD) GPUs:
#   1. the GPU tests (marked `gpu`; they skip where there is no GPU);
#   2. `floe demo --gpu`: a matchmaker and a local factory with a shape of 1-GPU pilots over all
#      of the node's GPUs (each pilot given its own), running examples/gpu.json: GPU tasks that
#      allocate memory and compute (bf16 matrix products with PyTorch where it is installed,
#      else 1 GiB held through the CUDA driver), then CPU tasks that check they see no GPU.
# It prints what the node has, what each step measured, and exits non-zero when a step failed.
#
#   scripts/gpu-check.sh                 # with .venv/bin/python, else python3
#   PYTHON=python3.12 scripts/gpu-check.sh
#   JOBS=12 scripts/gpu-check.sh         # more GPU tasks (default: 2 per GPU, at least 4)
#   GPU_DEVICES=gpus.json scripts/gpu-check.sh   # the node's GPUs declared (FLOE_NODE_GPUS form)
#                                                # where NVML cannot list them
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
WORKDIR=${WORKDIR:-var/gpu-check}
failed=0

echo "== the node"
"$PYTHON" --version
declared=()
if [ -n "${GPU_DEVICES:-}" ]; then
    gpus=$("$PYTHON" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' \
        "$GPU_DEVICES")
    declared=(--gpu-devices "$GPU_DEVICES")
    echo "GPUs declared in $GPU_DEVICES"
elif command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=index,name,memory.total,compute_cap,uuid --format=csv,noheader
    gpus=$(nvidia-smi -L | grep -c '^GPU ')
elif command -v rocm-smi >/dev/null; then
    rocm-smi --showproductname --showuniqueid
    gpus=$(rocm-smi --showuniqueid --json | "$PYTHON" -c \
        'import json, sys; print(sum(k.startswith("card") for k in json.load(sys.stdin)))')
else
    echo "no nvidia-smi or rocm-smi here: this node shows no GPU" >&2
    gpus=0
fi
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda:", torch.cuda.is_available())' \
    2>/dev/null || echo "no PyTorch: the GPU tasks hold memory through the CUDA driver instead"
echo "GPUs: $gpus"

echo
echo "== the GPU tests"
if ! "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu -rs tests/pilot/test_gpus.py \
        tests/pilot/test_online_running.py; then
    echo "the GPU tests FAILED" >&2
    failed=1
fi

echo
echo "== floe demo --gpu (a local factory over the node's $gpus GPUs)"
if [ "$gpus" -eq 0 ]; then
    echo "skipped: no GPU on this node" >&2
    exit 1
fi
jobs=${JOBS:-$(( gpus * 2 > 4 ? gpus * 2 : 4 ))}
started=$(date +%s)
if ! "$PYTHON" -m floe.cli.main demo --gpu "${declared[@]}" --workdir "$WORKDIR" --jobs "$jobs" \
        --pilots 2; then
    echo "the GPU demo FAILED: see $WORKDIR/factory.log and $WORKDIR/factory/local/logs/" >&2
    failed=1
fi
echo "took $(( $(date +%s) - started )) s; the record: $WORKDIR/floe.sqlite"
if [ "$gpus" -gt 0 ] && [ -f "$WORKDIR/floe.sqlite" ]; then
    echo
    echo "== each GPU attempt: its pilot's devices, its peak GPU memory and GPU time, its figures"
    "$PYTHON" - "$WORKDIR/floe.sqlite" <<'EOF'
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT a.attempt_id, a.host, a.pilot_id, a.state, a.peak_gpu_memory,"
                  " a.gpu_time, a.statistics, a.started, a.ended FROM attempts a"
                  " WHERE a.req_gpus > 0 ORDER BY a.attempt_id").fetchall()
devices = {pilot: json.loads(resources).get("gpus") or [] for pilot, resources in
           db.execute("SELECT pilot_id, resources FROM pilots")}
for attempt, host, pilot, state, peak, gpu_time, stats, started, ended in rows:
    given = ",".join(d["uuid"][:12] for d in devices.get(pilot, []))
    print(json.dumps({"attempt": attempt, "state": state, "pilot": pilot, "pilot_gpus": given,
                      "peak_gpu_memory_gib": round((peak or 0) / 2**30, 2),
                      "gpu_seconds": round(gpu_time or 0, 1), "wall": round(ended - started, 1),
                      **json.loads(stats or "{}")}))
# Two pilots alive together never held the same device.
spans = db.execute("SELECT pilot_id, registered, last_seen FROM pilots").fetchall()
for i, (a, a0, a1) in enumerate(spans):
    for b, b0, b1 in spans[i + 1:]:
        shared = {d["uuid"] for d in devices.get(a, [])} & {d["uuid"] for d in devices.get(b, [])}
        if shared and a0 < b1 and b0 < a1:
            print(f"pilots {a} and {b} held {shared} at the same time", file=sys.stderr)
            sys.exit(1)
print(f"{len(rows)} GPU attempts; no device was held by two live pilots at once")
EOF
    [ $? -eq 0 ] || failed=1
fi
exit $failed
