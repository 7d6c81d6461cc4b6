"""benchmarks/gpu.sh, the prepared GPU run, rehearsed on the CPU (`SMALL=1`): every part runs and saves its own
record, so the script cannot rot between the rare runs on a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["compute", "distilled", "data-e2e", "train", "compiled", "views", "shards"]


@pytest.mark.smoke
def test_the_gpu_script_rehearses_every_part_on_the_cpu(tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "SMALL": "1", "PYTHON": sys.executable, "RESULTS": str(results), "OUT": str(out)}
    done = subprocess.run(["bash", "benchmarks/gpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    run = json.loads(next(results.glob("gpu_run_*.json")).read_text())
    assert [(p["part"], p["exit"]) for p in run["parts"]] == [(name, 0) for name in PARTS]
    assert run["seconds"] <= run["budget_s"] == 480
    saved = sorted(p.name for p in results.glob("*.json"))
    kinds = [name.rsplit("_", 2)[0] for name in saved]  # without the machine and the date
    assert sorted(kinds) == sorted(
        [
            "deit_benchmark_cpu_inference-train",
            "deit_benchmark_cpu_inference-train_compiled",
            "deit_benchmark_cpu_distilled",
            "deit_benchmark_cpu_data-e2e",
            "bench_train_small",
            "bench_views",
            "bench_data_shards128MB",
            "gpu_run",
        ]
    ), saved
    assert sorted(p.name for p in out.glob("*.json")) == saved  # handed back part by part
    data = json.loads(next(results.glob("deit_benchmark_cpu_data-e2e_*.json")).read_text())
    assert [r["measurement"] for r in data["results"]][-1] == "end to end, distilled, device path on cpu"
    train = json.loads(next(results.glob("bench_train_small_*.json")).read_text())
    assert train["teacher"].startswith("regnety")
    assert [one["exit"] for one in train["cache_teacher"].values()] == [0, 0]  # one cache per input path
    assert [label.rsplit(" ", 1)[-1] for label in train["runs"]] == ["image", "device", "loader"]
    for label, one in train["runs"].items():
        assert one["exit"] == 0 and [e["epoch"] for e in one["epochs"]] == [0, 1], label
        assert all(e["images_per_s"] > 0 for e in one["epochs"])
