"""`deit demo --quick`: the whole pipeline, checked for its structure (quick mode is a smoke test, not a result)."""

import json

import pytest
from PIL import Image

from deit.cli import main
from deit.config import TrainConfig, merge
from deit.demo import METHODS, STUDENT, findings, run_demo, train_side_by_side


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
    assert len(table) == 3 + len(METHODS)  # header + teacher + cached teacher outputs + one row per method
    # the teacher ran once for all students: its outputs were cached, the distilled students read them
    assert results["teacher_cache_seconds"] > 0 and (out / "teacher_cache" / "meta.json").exists()
    assert "teacher_cache" in (out / "hard_attention" / "config.yaml").read_text()
    assert "quick mode" in report and "Hard distillation through the distillation token" in report
    for picture in ("curves.png", "attention.png"):
        with Image.open(out / picture) as image:
            assert image.size[0] > 400 and image.size[1] > 200
    for folder in ("teacher", "none", "soft", "hard_distillation_token", "hard_attention"):
        assert (out / folder / "log.jsonl").exists() and (out / folder / "checkpoint.pth").exists()
    # the demo runs again into its own folder; it refuses a folder that holds something else
    # (students train side by side; the ViT-teacher row waits for the "none" student, its teacher)
    again = run_demo(output_dir=out, quick=True, num_workers=0, vit_teacher=True, lanes=3)
    # same seed, same table
    assert again["teacher"]["acc1"] == results["teacher"]["acc1"]
    assert [s["acc1"] for s in again["students"][:4]] == [s["acc1"] for s in results["students"]]
    assert again["students"][4]["method"] == "hard, ViT teacher" and again["students"][4]["teacher"] == STUDENT
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no earlier demo"):
        run_demo(output_dir=other, quick=True, num_workers=0)


def test_quick_demo_on_an_image_folder_trains_the_teacher_at_the_students_size(tmp_path):
    # folder images have no size of their own: the teacher trains on the students' 28 px views, not at 224 px
    from deit.models import read_checkpoint

    for split, count in (("train", 20), ("val", 4)):
        for label in range(10):
            folder = tmp_path / "images" / split / str(label)
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("L", (40, 40), color=(label * 25 + i) % 256).save(folder / f"{i}.png")
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--data-set", "folder", "--data-path", str(tmp_path / "images"), "--output_dir",
                 str(out), "--num_workers", "0"]) == 0  # fmt: skip
    for run in ("teacher", "none", "hard_distillation_token"):
        assert read_checkpoint(out / run).config["data"]["input_size"] == 28
    results = json.loads((out / "results.json").read_text())
    assert [s["method"] for s in results["students"]] == [label for label, _, _ in METHODS]


def test_a_failing_student_is_reported_in_one_line(tmp_path):
    values, explicit = merge({}, {"data.data_set": "folder", "data.data_path": str(tmp_path / "nowhere"),
                                  "run.output_dir": str(tmp_path / "none")})  # fmt: skip
    job = ("none", {"method": "none"}, TrainConfig.from_dict(values, explicit))
    with pytest.raises(ValueError, match=r"the none student failed: data path not found: .*nowhere \(its output: "):
        train_side_by_side([job], tmp_path, lanes=1)


def results_with(none: float, hard: float, attention: float, curves: dict | None = None) -> dict:
    curves = curves or {}
    accs = {"none": none, "soft (tau 3, alpha 0.1)": none, "hard, distillation token": hard,
            "hard + attention (beta 1)": attention}  # fmt: skip
    return {"students": [{"method": m, "acc1": a, "acc1_by_epoch": curves.get(m)} for m, a in accs.items()]}


def test_findings_follow_the_numbers():
    clear = findings(results_with(none=90.0, hard=94.0, attention=95.0))
    assert "+4.0 points" in clear[0] and not any("margin is small" in line for line in clear)
    assert "(+1.0 points)" in clear[2]
    close = findings(results_with(none=93.0, hard=93.5, attention=92.0))
    assert any("margin is small here (+0.5 points)" in line for line in close)
    assert "1.5 points below hard alone" in close[2]
    curves = {"none": [10, 20, 30, 40, 50, 60, 70, 80], "hard, distillation token": [10, 25, 35, 45, 55, 65, 75, 85],
              "hard + attention (beta 1)": [20, 40, 50, 60, 70, 75, 80, 86]}  # fmt: skip
    early = findings(results_with(none=80.0, hard=85.0, attention=86.0, curves=curves))
    assert any("after 3 of 8 epochs, 50.0% with it against 35.0% for hard alone and 30.0%" in line for line in early)
