"""`deit demo --quick`: the whole pipeline, checked for its structure (quick mode is a smoke test, not a result)."""

import json

import pytest
from PIL import Image

from deit.cli import main
from deit.demo import METHODS, run_demo


def test_quick_demo_writes_report_results_and_pictures(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output_dir", str(out), "--num_workers", "0"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["teacher"]) >= {"model", "acc1", "train_seconds"}
    assert [s["method"] for s in results["students"]] == [label for label, _, _ in METHODS]
    for student in results["students"]:
        assert set(student) >= {"method", "acc1", "train_seconds"}
        assert 0.0 <= student["acc1"] <= 100.0 and student["train_seconds"] > 0
    report = (out / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| ")]
    assert table[0] == "| method | teacher | student top-1 | parameters | training time |"
    assert len(table) == 2 + len(METHODS)  # header + teacher + one row per method
    assert "quick mode" in report and "Hard distillation through the distillation token" in report
    for picture in ("curves.png", "attention.png"):
        with Image.open(out / picture) as image:
            assert image.size[0] > 400 and image.size[1] > 200
    for folder in ("teacher", "none", "soft", "hard_distillation_token", "hard_attention"):
        assert (out / folder / "log.jsonl").exists() and (out / folder / "checkpoint.pth").exists()
    # the demo runs again into its own folder; it refuses a folder that holds something else
    run_demo(output_dir=out, quick=True, num_workers=0)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no earlier demo"):
        run_demo(output_dir=other, quick=True, num_workers=0)
