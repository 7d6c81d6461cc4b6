"""A tiny distilled run, made with its teacher cache, SIGKILLed at 20 random moments (mid-step, mid-write of a
checkpoint, log or cache file, mid-cache) and resumed each time, ends with the weights of a run never interrupted;
nothing it leaves behind trips the next run up."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import torch
from conftest import FAST, read_log

DRIVER = Path(__file__).with_name("kill_driver.py")
KILLS = 20


def deit(args: list[str], kill: str | None = None, events: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEIT_KILL_AT": kill or "", "DEIT_EVENTS": str(events or "")}
    return subprocess.run([sys.executable, str(DRIVER), *args], env=env, capture_output=True, text=True, timeout=300)


def test_a_run_killed_at_20_random_moments_resumes_to_the_uninterrupted_weights(teacher, tmp_path):
    def args(folder: Path) -> list[str]:
        return [
            "train",
            "--model",
            "deit_pico_distilled_patch7_28",
            *FAST,
            "--labels-per-class",
            "8",
            "--batch-size",
            "16",
            "--epochs",
            "4",
            "--mixup",
            "0",
            "--cutmix",
            "0",
            "--distillation-type",
            "hard",
            "--teacher-path",
            str(teacher),
            "--teacher-cache",
            str(folder / "cache"),
            "--output_dir",
            str(folder / "run"),
        ]

    whole = deit(args(tmp_path / "whole"), events=tmp_path / "events.json")
    assert whole.returncode == 0, whole.stderr[-3000:]
    total = json.loads((tmp_path / "events.json").read_text())
    # 80 images, 16 a step, 4 epochs; files: cache meta + 4 epochs, config + log at the start, log + checkpoint an
    # epoch; one cache batch an epoch
    assert total == {"step": 20, "write": 15, "cache": 4}
    expected = torch.load(tmp_path / "whole" / "run" / "checkpoint.pth", weights_only=True)
    expected_log = read_log(tmp_path / "whole" / "run")

    rng = random.Random(0)
    kills = [rng.choice(["step", "write", "cache"]) for _ in range(KILLS)]
    moments = [f"{kind}:{rng.randint(1, total[kind])}" for kind in kills]
    chains, done = 0, 0
    while done < KILLS or chains == 0:
        chains += 1
        folder = tmp_path / f"chain{chains}"
        killed_here = []
        while True:
            resume = (folder / "run" / "checkpoint.pth").exists()
            argv = ["train", "--resume", str(folder / "run")] if resume else args(folder)
            moment = moments[done] if done < KILLS else None
            result = deit(argv, kill=moment)
            if result.returncode == -signal.SIGKILL:
                killed_here.append(moment)
                done += 1
                continue
            # the run got to its end before that moment came (a resumed run has fewer steps left)
            assert result.returncode == 0, f"after kills at {killed_here}: {result.stderr[-3000:]}"
            break
        state = torch.load(folder / "run" / "checkpoint.pth", weights_only=True)
        assert state["epoch"] == 3 and state["num_updates"] == expected["num_updates"], killed_here
        for key, value in expected["model"].items():
            assert torch.equal(state["model"][key], value), f"{key} after kills at {killed_here}"
        assert read_log(folder / "run") == [
            {**line, "images_per_s": got["images_per_s"], "train_seconds": got["train_seconds"]}
            for line, got in zip(expected_log, read_log(folder / "run"))
        ], killed_here  # the same log, but for timings
        leftovers = [p.name for p in folder.rglob(".*") if p.is_file()]
        assert leftovers == [], f"after kills at {killed_here}: {leftovers}"
    assert done == KILLS
