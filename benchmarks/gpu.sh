#!/usr/bin/env bash
# Every GPU figure in one prepared run of at most 8 minutes on one H100/H200, from a checkout:
#
#   bash benchmarks/gpu.sh            # records in benchmarks/results/ (and in $OUT when set, part by part)
#   SMALL=1 bash benchmarks/gpu.sh    # a CPU rehearsal with tiny sizes (the test suite runs it)
#
# Parts, in order, each under its own time limit and each saving its own record when it ends (a part that fails
# or runs out of time loses no other); the limits never add up to more than BUDGET seconds (480): a part that
# would start with under 20 s left is skipped, saying so. gpu_run_<machine>_<date>.json lists every part's exit
# status and seconds.
#  1. compute: deit benchmark --parts inference train: DeiT-S inference and train step, ours against timm's, eager,
#     bf16, batch 256.
#  2. distilled: the distilled step with a RegNetY-16GF teacher online (the official loop's and ours) and from a
#     teacher cache.
#  3. data, end to end: the input pipeline alone and loader + augmentation + teacher (cached) + student step over
#     3,072 random-content 500x375 JPEGs held in memory (ours per image, ours with batch augmentation, ours on the
#     device input path: JPEGs decoded and cropped on the GPU; the official loop), with the machine's cores but two
#     as loader processes.
#  4. deit train: a distilled DeiT-S on a generated ImageFolder of 500x375 JPEGs with a RegNetY-16GF state dict as
#     teacher: online, then cache + batch augmentation + compile on the device input path and on the loader path;
#     images/s per epoch (benchmarks/bench_train.py).
#  5. compiled: part 1 again with --compile, eager and compiled side by side (compilation takes most of its time).
#  6. views: a training view's CPU time step by step against timm's transform, per core (bench_views.py).
#  7. shards: the input pipeline from an ImageFolder against the same JPEGs as WebDataset shards (bench_data.py).
#
# Packages the GPU image lacks: webdataset and braceexpand (part 6) are installed from wheels in benchmarks/wheels/
# (ignored by git). Fill it on a machine with an index, before the run:
#     pip download --no-deps -d benchmarks/wheels webdataset braceexpand
# and carry it (the device tool: carry=["benchmarks/wheels"]). Without them part 7 is skipped, saying so.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RESULTS=${RESULTS:-benchmarks/results}
BUDGET=${BUDGET:-480}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$RESULTS"
STATUS=$(mktemp)
trap 'rm -f "$STATUS"' EXIT

if [ -n "${SMALL:-}" ]; then  # the rehearsal: the same commands, tiny sizes, on the CPU
    DEVICE=(--device cpu); PRESET=cpu; WORKERS=1; IMAGES=64; ROUNDS=(--rounds 1 --steps 1); E2E=(); COMPILE=(--compile)
    TRAIN=(--small --timeout 120); VIEWS=(--images 4 --rounds 1); DATA=(--images 64 --batch-size 16)
else
    DEVICE=(); PRESET=gpu; WORKERS=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 )); IMAGES=3072; ROUNDS=(--rounds 5 --steps 10)
    E2E=(--rounds 3); COMPILE=(--compile); TRAIN=(--timeout 100); VIEWS=(--images 48 --rounds 5); DATA=(--images 3072 --batch-size 256)
fi

# part NAME LIMIT COMMAND...: COMMAND under min(LIMIT, what is left of BUDGET) seconds; its exit status noted
part() {
    local name=$1 limit=$2 left start code
    shift 2
    left=$(( BUDGET - SECONDS ))
    if (( left < 20 )); then
        echo "== $name: skipped, ${left} s of the ${BUDGET} s budget left"
        echo "$name skipped 0" >> "$STATUS"
        return
    fi
    (( limit > left )) && limit=$left
    echo "== $name (at most ${limit} s)"
    start=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | grep -v Warning
    code=${PIPESTATUS[0]}
    (( code == 124 || code == 137 )) && echo "== $name: stopped at its ${limit} s limit"
    echo "$name $code $(( SECONDS - start ))" >> "$STATUS"
    if [ -n "${OUT:-}" ]; then cp "$RESULTS"/*.json "$OUT"/ 2> /dev/null; fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2> /dev/null || true
$PY -c "import sys, torch, torchvision, timm; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| torchvision', torchvision.__version__, '| timm', timm.__version__)"
if ! $PY -c "import webdataset" 2> /dev/null && ls benchmarks/wheels/webdataset-*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --find-links benchmarks/wheels webdataset braceexpand || true
fi

BENCH=($PY -m deit benchmark --preset "$PRESET" "${DEVICE[@]}" "${ROUNDS[@]}" --num_workers "$WORKERS" --out "$RESULTS")
part compute 50 "${BENCH[@]}" --parts inference train
part distilled 60 "${BENCH[@]}" --parts distilled
part data-e2e 120 "${BENCH[@]}" "${E2E[@]}" --parts data e2e --data-images "$IMAGES"
part train 240 $PY benchmarks/bench_train.py "${DEVICE[@]}" "${TRAIN[@]}" --num_workers "$WORKERS" --out "$RESULTS"
part compiled 150 "${BENCH[@]}" "${COMPILE[@]}" --parts inference train
part views 40 $PY benchmarks/bench_views.py "${VIEWS[@]}" --out "$RESULTS"
if $PY -c "import webdataset" 2> /dev/null; then
    part shards 60 $PY benchmarks/bench_data.py "${DATA[@]}" --num_workers "$WORKERS" --rounds 3 --shard-size 128MB \
        --out "$RESULTS"
else
    echo "== shards: skipped, webdataset is not installed (see the top of this script)"
    echo "shards skipped 0" >> "$STATUS"
fi

$PY - "$STATUS" "$RESULTS" "$SECONDS" "$BUDGET" << 'EOF'
import datetime, sys
sys.path.insert(0, "src")
from deit.benchmark import save_record
from deit.distributed import machine
import torch

status, results, seconds, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
parts = []
for line in open(status):
    name, code, took = line.split()
    parts.append({"part": name, "exit": code if code == "skipped" else int(code), "seconds": int(took)})
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
record = {"benchmark": "gpu_run", "date": datetime.date.today().isoformat(), "machine": gpu or machine(),
          "torch": torch.__version__, "seconds": seconds, "budget_s": budget, "parts": parts}
save_record(record, results)
print(" | ".join(f"{p['part']} {p['exit']} ({p['seconds']} s)" for p in parts), f"| total {seconds} s")
sys.exit(0 if all(p["exit"] == 0 for p in parts if p["exit"] != "skipped") else 1)
EOF
code=$?
if [ -n "${OUT:-}" ]; then cp "$RESULTS"/*.json "$OUT"/ 2> /dev/null; fi
exit $code
