#!/usr/bin/env bash
# Every GPU figure in one go (estimated at 9 minutes on an H100/H200; not run yet): run from the repo root on a
# machine with a GPU, torch, torchvision and timm installed.
#
#   bash benchmarks/gpu.sh            # results in benchmarks/results/ (and in $OUT when set)
#
# 1. deit benchmark --preset gpu --compile: DeiT-S inference and train step, eager and compiled, ours against timm;
#    the distilled step with a RegNetY-16GF teacher online (official loop) and from a teacher cache; the data
#    pipeline on JPEGs in memory, and end to end (loader, augmentation per image or on the GPU, teacher or
#    its cache, student). bf16, batch 256.
# 2. bench_models.py on CUDA: forward and forward+backward, DeiT-Ti/S/B, eager and compiled.
# 3. bench_views.py: the per-image training view step by step against timm's transform, per core of this
#    machine's CPU (what caps the official loop on a GPU), and the loader part of batch augmentation.
# 4. bench_data.py: the training input pipeline (the whole DeiT recipe per image, and batch augmentation's loader
#    part) from an ImageFolder against the same JPEGs as WebDataset shards, with the machine's loader workers.
#    It needs webdataset: where it is not installed, wheels in benchmarks/wheels/ are installed from
#    (`pip download webdataset braceexpand -d benchmarks/wheels` on a machine with an index; the device tool carries
#    that ignored folder with carry=["benchmarks/wheels"]), else it is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RESULTS=benchmarks/results
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
WORKERS=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 300 $PY -m deit benchmark --preset gpu --compile --rounds 5 --steps 10 --num_workers "$WORKERS" \
    --out "$RESULTS" 2>&1 | grep -v Warning
timeout 120 $PY benchmarks/bench_models.py --device cuda --batch-size 256 --repeats 7 \
    --models deit_tiny_patch16_224 deit_small_patch16_224 deit_base_patch16_224 2>&1 | grep -v Warning
timeout 180 $PY benchmarks/bench_models.py --device cuda --batch-size 256 --repeats 7 --compile \
    --models deit_small_patch16_224 2>&1 | grep -v Warning
timeout 120 $PY benchmarks/bench_views.py --rounds 5 2>&1 | grep -v Warning
if ! $PY -c "import webdataset" 2> /dev/null && ls benchmarks/wheels/webdataset-*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --find-links benchmarks/wheels webdataset || true
fi
if $PY -c "import webdataset" 2> /dev/null; then
    timeout 300 $PY benchmarks/bench_data.py --images 8000 --batch-size 256 --num_workers "$WORKERS" --rounds 3 \
        --shard-size 128MB 2>&1 | grep -v Warning
    timeout 200 $PY benchmarks/bench_data.py --images 8000 --batch-size 256 --num_workers "$WORKERS" --rounds 3 \
        --shard-size 128MB --batch-aug 2>&1 | grep -v Warning
else
    echo "bench_data.py skipped: webdataset is not installed (see the comment at the top of this script)"
fi
if [ -n "${OUT:-}" ]; then cp "$RESULTS"/*.json "$OUT"/; fi
