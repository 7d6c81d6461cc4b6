"""`deit demo --quick`: the whole pipeline, checked for its structure (quick mode is a smoke test, not a result)."""

import json

import pytest
from PIL import Image

from deit.checkpoint import load_training_state
from deit.cli import main
from deit.config import TrainConfig, merge
from deit.demo import run_demo
from deit.demo.lanes import train_side_by_side
from deit.demo.plan import CACHE, METHODS, STUDENT, Job
from deit.demo.report import curve_findings, findings


def test_quick_demo_writes_report_results_and_pictures(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output_dir", str(out), "--num_workers", "0"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["teacher"]) >= {"model", "acc1", "train_seconds"}
    assert [s["method"] for s in results["students"]] == [label for label, _, _ in METHODS]
    for student in results["students"]:
        assert set(student) >= {"method", "acc1", "train_seconds"}
        assert 0.0 <= student["acc1"] <= 100.0 and student["train_seconds"] > 0
    # the study: each method at 10 labels per class and at all 400
    assert [(p["labels_per_class"], p["method"]) for p in results["curve"]] == [
        (n, m) for n in (10, 400) for m in ("teacher", "none", "hard", "soft + attention")
    ]
    assert all(0 <= p["acc1"] <= 100 and p["train_seconds"] > 0 for p in results["curve"])
    at = {(p["labels_per_class"], p["method"]): p["acc1"] for p in results["curve"]}
    assert at[400, "teacher"] == results["teacher"]["acc1"]
    assert at[400, "hard"] == results["students"][2]["acc1"]
    assert [(h["labels_per_class"], h["method"]) for h in results["heads"]] == [
        (n, m) for n in (10, 400) for m in ("hard", "soft + attention")
    ]
    assert all(0 <= h[k] <= 100 for h in results["heads"] for k in ("class", "distillation", "average"))
    # the student alone sees its 100 labelled images 40 times an epoch: as many steps as the distilled students
    alone, distilled = (load_training_state(out / run / "checkpoint.pth") for run in ("none_10", "soft_attention_10"))
    assert alone["config"]["data"]["repeat"] == 40 and alone["config"]["data"]["labels_per_class"] == 10
    assert distilled["config"]["data"]["unlabelled"] and alone["num_updates"] == distilled["num_updates"] == 125
    assert load_training_state(out / "teacher_10" / "checkpoint.pth")["config"]["data"]["labels_per_class"] == 10
    report = (out / "report.md").read_text()
    tables = [line for line in report.splitlines() if line.startswith("| ")]
    assert tables[0] == "| labelled images per class | 10 | 400 |" and len(tables) == 5 + 3 + len(METHODS) + 1 + 4
    assert "| method | teacher | student top-1 | parameters | training time |" in tables
    # each label count's teacher ran once for its distilled students: its outputs were cached, they read them
    assert results["teacher_cache_seconds"] > 0
    for tag in ("10", "all"):
        assert (out / f"cache_{tag}" / CACHE / "meta.json").exists()
        assert f"cache_{tag}" in (out / f"soft_attention_{tag}" / "config.yaml").read_text()
    assert "quick mode" in report and "10 labels per class: hard distillation" in report
    for picture in ("curve.png", "curves.png", "attention.png"):
        with Image.open(out / picture) as image:
            assert image.size[0] > 400 and image.size[1] > 200
    for tag in ("10", "all"):
        for run in ("teacher", "none", "hard_distillation_token", "soft_attention"):
            assert (out / f"{run}_{tag}" / "log.jsonl").exists() and (out / f"{run}_{tag}" / "checkpoint.pth").exists()
    # the demo runs again into its own folder; it refuses a folder that holds something else
    # (runs train side by side; the ViT-teacher row waits for the "none" student, its teacher)
    again = run_demo(output_dir=out, quick=True, num_workers=0, vit_teacher=True, lanes=3)
    # same seed, same tables
    assert again["teacher"]["acc1"] == results["teacher"]["acc1"]
    assert [p["acc1"] for p in again["curve"]] == [p["acc1"] for p in results["curve"]]
    assert [s["acc1"] for s in again["students"][:4]] == [s["acc1"] for s in results["students"]]
    assert again["students"][4]["method"] == "hard, ViT teacher" and again["students"][4]["teacher"] == STUDENT
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no earlier demo"):
        run_demo(output_dir=other, quick=True, num_workers=0)


def small_folder(root, train=20, val=4):
    """Ten classes of flat 40 px grayscale images in train/ and val/."""
    for split, count in (("train", train), ("val", val)):
        for label in range(10):
            folder = root / split / str(label)
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("L", (40, 40), color=(label * 25 + i) % 256).save(folder / f"{i}.png")
    return root


def test_quick_demo_on_an_image_folder_trains_the_teacher_at_the_students_size(tmp_path):
    # folder images have no size of their own: the teacher trains on the students' 28 px views, not at 224 px
    from deit.models import read_checkpoint

    small_folder(tmp_path / "images")
    (tmp_path / "images" / "train" / "3" / "damaged.png").write_bytes(b"\x89PNG\r\n not an image")
    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--quick",
                "--data-set",
                "folder",
                "--data-path",
                str(tmp_path / "images"),
                "--output_dir",
                str(out),
                "--num_workers",
                "0",
            ]
        )
        == 0
    )
    for run in ("teacher_all", "teacher_10", "none_10", "hard_distillation_token_all"):
        assert read_checkpoint(out / run).config["data"]["input_size"] == 28
    results = json.loads((out / "results.json").read_text())
    assert [s["method"] for s in results["students"]] == [label for label, _, _ in METHODS]
    # the damaged file is left out of every run, counted once, and said
    assert results["unreadable_images"] == 1
    assert "1 training image could not be read" in (out / "report.md").read_text()


def test_a_count_of_labels_a_class_cannot_hold_is_left_out_and_said(tmp_path, capsys):
    # class 2 has 5 images: 10 labels per class would keep every label of it, which the "all" runs show
    from deit.demo import study
    from deit.demo.plan import LABELS, Students, label_counts, study_jobs

    targets = [0] * 30 + [1] * 30 + [2] * 5
    assert label_counts(targets, LABELS) == ([None], 5)
    assert label_counts(targets[:-5] + [2] * 11, LABELS) == ([10, None], 11)
    assert {j.name for j in study_jobs(tmp_path, {"data.data_set": "mnist5k"}, targets, LABELS)} == {
        "teacher_all",
        "cache_all",
        "none_all",
        "hard_distillation_token_all",
        "soft_attention_all",
        "soft_all",
    }

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    class Data:  # the folder's training split, as the demo reads it
        pass

    Data.targets = targets
    with pytest.MonkeyPatch.context() as m:  # the demo up to its runs, which are not started
        m.setattr(study, "build_dataset", lambda *a, **k: (Data(), None))
        m.setattr(study, "study_jobs", stop)
        with pytest.raises(Stop):
            study._demo(
                tmp_path,
                data_set="folder",
                data_path=None,
                quick=False,
                seed=0,
                vit_teacher=False,
                num_workers=0,
                lanes=1,
                students=Students(),
            )
    out = capsys.readouterr().out
    assert "10 labels per class left out: the smallest class has 5 training images" in out
    assert "100 labels per class left out" in out


def test_every_data_set_gets_the_demos_settings_but_mirroring(tmp_path):
    # one set of settings for every data set, built-in or a folder: only whether a mirror image keeps its class
    # (digits: no) follows the data; each set's own defaults (e.g. a folder's CutMix and 0.875 crop) are overridden
    from dataclasses import asdict

    from deit.data.datasets import dataset_defaults
    from deit.demo.plan import LABELS, study_jobs

    targets = [c for c in range(10) for _ in range(400)]
    settings = {}
    for data_set in ("mnist5k", "fashion-mnist", "folder"):
        common = {"data.data_set": data_set, "data.data_path": str(tmp_path), "run.seed": 0}
        for job in study_jobs(tmp_path / data_set, common, targets, LABELS):
            cfg = job.cfg.with_defaults(dataset_defaults(data_set))
            aug = asdict(cfg.aug)
            settings.setdefault(job.name, {})[data_set] = (
                aug.pop("hflip"),
                aug,
                asdict(cfg.optim),
                cfg.run.epochs,
                cfg.run.batch_size,
            )
    assert len(settings) == 16  # 3 label counts x (teacher, its cache, 3 students), and soft with every label
    for name, by_set in settings.items():
        assert by_set["mnist5k"][0] == 0.0 and by_set["fashion-mnist"][0] == by_set["folder"][0] == 0.5, name
        assert by_set["mnist5k"][1:] == by_set["fashion-mnist"][1:] == by_set["folder"][1:], name
        assert (by_set["folder"][1]["cutmix"], by_set["folder"][1]["eval_crop_ratio"]) == (0.0, 1.0), name


def test_with_few_labels_the_students_train_longer_and_the_student_alone_takes_their_steps(tmp_path):
    from deit.demo.plan import FEW_LABEL_EPOCHS, LABELS, STUDENTS, TEACHER, study_jobs

    targets = [c for c in range(10) for _ in range(400)]
    jobs = {j.name: j.cfg for j in study_jobs(tmp_path, {"data.data_set": "mnist5k"}, targets, LABELS)}
    for tag, epochs in (("10", FEW_LABEL_EPOCHS), ("100", STUDENTS["run.epochs"]), ("all", STUDENTS["run.epochs"])):
        assert jobs[f"teacher_{tag}"].run.epochs == TEACHER["run.epochs"], tag
        # the cache refuses a student of another length: it holds exactly the distilled students' epochs of views
        distilled = [jobs[f"cache_{tag}"], jobs[f"hard_distillation_token_{tag}"], jobs[f"soft_attention_{tag}"]]
        assert [cfg.run.epochs for cfg in distilled] == [epochs] * 3, tag
        alone = jobs[f"none_{tag}"]
        labelled = len(targets) if tag == "all" else 10 * int(tag)
        assert labelled * alone.data.repeat * alone.run.epochs == len(targets) * epochs, tag


def test_another_student_and_schedule_run_the_same_study(tmp_path, capsys):
    from deit.demo.plan import LABELS, TEACHER_MODEL, Students, study_jobs
    from deit.models import read_checkpoint

    targets = [c for c in range(10) for _ in range(400)]
    students = Students.of("deit_nano_distilled_patch7_28", epochs=5)  # either twin names the pair
    assert (students.alone, students.distilled) == ("deit_nano_patch7_28", "deit_nano_distilled_patch7_28")
    jobs = {j.name: j.cfg for j in study_jobs(tmp_path, {"data.data_set": "mnist5k"}, targets, LABELS, students)}
    for tag in ("10", "100", "all"):
        assert (jobs[f"teacher_{tag}"].model.model, jobs[f"teacher_{tag}"].model.input_size) == (TEACHER_MODEL, 28)
        assert jobs[f"none_{tag}"].model.model == "deit_nano_patch7_28"
        distilled = [jobs[f"cache_{tag}"], jobs[f"hard_distillation_token_{tag}"], jobs[f"soft_attention_{tag}"]]
        assert {cfg.model.model for cfg in distilled} == {"deit_nano_distilled_patch7_28"}
        assert [cfg.run.epochs for cfg in distilled] == [5] * 3, tag  # every count: no longer run at 10 labels
        alone = jobs[f"none_{tag}"]
        labelled = len(targets) if tag == "all" else 10 * int(tag)
        assert labelled * alone.data.repeat * alone.run.epochs == len(targets) * 5, tag
    assert (jobs["soft_all"].model.model, jobs["soft_all"].run.epochs) == ("deit_nano_distilled_patch7_28", 5)

    out = tmp_path / "demo"
    args = ["demo", "--quick", "--data-set", "folder", "--data-path", str(small_folder(tmp_path / "images"))]
    assert main([*args, "--output_dir", str(out), "--num_workers", "0", "--student", "deit_nano_patch7_28"]) == 0
    assert read_checkpoint(out / "none_10").config["model"] == "deit_nano_patch7_28"
    assert read_checkpoint(out / "soft_attention_all").config["model"] == "deit_nano_distilled_patch7_28"
    results = json.loads((out / "results.json").read_text())
    assert results["student"] == "deit_nano_patch7_28" and len(results["heads"]) == 4
    assert "the student (`deit_nano_patch7_28`" in (out / "report.md").read_text()
    capsys.readouterr()
    # a student that is no registered DeiT: one line, before the demo writes anything
    assert main([*args, "--output_dir", str(tmp_path / "cnn"), "--student", "small_cnn"]) == 2
    assert "unknown model 'small_cnn'" in capsys.readouterr().err and not (tmp_path / "cnn").exists()


def test_a_failing_student_is_reported_in_one_line(tmp_path):
    values, explicit = merge(
        {},
        {
            "data.data_set": "folder",
            "data.data_path": str(tmp_path / "nowhere"),
            "run.output_dir": str(tmp_path / "none"),
        },
    )
    job = Job("none", TrainConfig.from_dict(values, explicit), {"method": "none"})
    with pytest.raises(ValueError, match=r"the none run failed: data path not found: .*nowhere \(its output: "):
        train_side_by_side([job], tmp_path, lanes=1)


def results_with(none: float, hard: float, attention: float, curves: dict | None = None) -> dict:
    curves = curves or {}
    accs = {
        "none": none,
        "soft (tau 3, alpha 0.1)": none,
        "hard, distillation token": hard,
        "soft + attention (tau 3, alpha 0.9, beta 1)": attention,
    }
    return {"students": [{"method": m, "acc1": a, "acc1_by_epoch": curves.get(m)} for m, a in accs.items()]}


def test_findings_follow_the_numbers():
    clear = findings(results_with(none=90.0, hard=94.0, attention=95.0))
    assert "+4.0 points" in clear[0] and "(+1.0 points against hard)" in clear[2]
    close = findings(results_with(none=93.0, hard=93.5, attention=92.0))
    assert "(-1.5 points against hard)" in close[2]
    curves = {
        "none": [10, 20, 30, 40, 50, 60, 70, 80],
        "hard, distillation token": [10, 25, 35, 45, 55, 65, 75, 85],
        "soft + attention (tau 3, alpha 0.9, beta 1)": [20, 40, 50, 60, 70, 75, 80, 86],
    }
    early = findings(results_with(none=80.0, hard=85.0, attention=86.0, curves=curves))
    assert any("After 3 of 8 epochs: 50.0% for soft + attention, 35.0% for hard, 30.0%" in line for line in early)


def study(points: dict) -> dict:
    return {
        "curve": [{"labels_per_class": n, "method": m, "acc1": a} for (n, m), a in points.items()],
        "heads": [{"labels_per_class": 10, "method": "hard", "class": 80.0, "distillation": 84.0, "average": 83.0}],
    }


def test_study_findings_follow_the_numbers():
    points = {
        (10, "teacher"): 91.0,
        (10, "none"): 80.0,
        (10, "hard"): 89.0,
        (10, "soft + attention"): 92.0,
        (100, "teacher"): 97.0,
        (100, "none"): 94.0,
        (100, "hard"): 96.5,
        (100, "soft + attention"): 96.0,
        (400, "teacher"): 98.5,
        (400, "none"): 96.0,
        (400, "hard"): 96.5,
        (400, "soft + attention"): 97.0,
    }
    lines = curve_findings(study(points))
    assert lines[0].startswith(
        "10 labels per class: hard distillation 89.0% against 80.0% for the student alone "
        "(+9.0 points), soft + attention 92.0% (+12.0); the teacher 91.0% (hard -2.0"
    )
    assert "margin over the student alone narrows as labels grow: +9.0, +2.5, +0.5 points" in lines[3]
    assert "class token 80.0%, distillation token 84.0%, their average 83.0%" in lines[4]
    points[400, "hard"] = 99.0
    assert "does not narrow at every step" in curve_findings(study(points))[3]


def test_a_folder_without_val_or_with_other_val_classes_is_refused_before_any_run(tmp_path, capsys):
    for label in ("a", "b"):
        folder = tmp_path / "images" / "train" / label
        folder.mkdir(parents=True)
        for i in range(12):
            Image.new("L", (30, 30), color=i * 20).save(folder / f"{i}.png")
    args = ["demo", "--quick", "--data-set", "folder", "--data-path", str(tmp_path / "images")]
    assert main([*args, "--output_dir", str(tmp_path / "one")]) != 0
    assert "has no val/ folder" in capsys.readouterr().err
    (tmp_path / "images" / "val" / "a").mkdir(parents=True)
    (tmp_path / "images" / "val" / "c").mkdir(parents=True)
    assert main([*args, "--output_dir", str(tmp_path / "two")]) != 0
    assert "class folders of" in capsys.readouterr().err
    for out in ("one", "two"):
        assert not (tmp_path / out / "teacher_all").exists()


def test_the_runs_that_start_the_longest_chains_of_work_are_taken_up_first(tmp_path):
    # a free lane takes the first job it can: the 10-label runs (4x the epochs) and the teacher and cache they wait
    # on first, then the short ones, which fill both lanes at the end; each job after those it reads
    from deit.demo.plan import LABELS, Job, longest_chain_first, study_jobs

    targets = [c for c in range(10) for _ in range(400)]
    jobs = study_jobs(tmp_path, {"data.data_set": "mnist5k"}, targets, LABELS)
    names = [j.name for j in jobs]
    for job in jobs:
        assert job.work > 0, job.name
        assert all(names.index(a) < names.index(job.name) for a in job.after), job.name
    assert names[:2] == ["teacher_10", "cache_10"]
    tens = [i for i, n in enumerate(names) if n.endswith("_10")]
    assert tens == list(range(len(tens)))  # every 10-label run before any other
    # the rule itself: a short job that starts a long chain goes before a long job that ends one
    a, b, c = Job("a", None, work=1.0), Job("b", None, work=10.0, after=("a",)), Job("c", None, work=5.0)
    assert [j.name for j in longest_chain_first([c, b, a])] == ["a", "b", "c"]


def _demo_seeds():
    """benchmarks/demo_seeds.py, a script, as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_seeds.py"
    spec = importlib.util.spec_from_file_location("demo_seeds", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _seed_results() -> dict:
    """A finished demo's results.json, seed 1 of the nano study on Fashion-MNIST, cut to what a study reads."""
    return {
        "data_set": "fashion-mnist",
        "seed": 1,
        "quick": False,
        "student": "deit_nano_patch7_28",
        "student_epochs": 72,
        "seconds": 3539.4,
        "teacher": {"model": "small_cnn", "acc1": 83.2},
        "teacher_cache_seconds": 2.5,
        "curve": [{"labels_per_class": 10, "method": "teacher", "acc1": 75.2}],
        "students": [],
        "heads": [],
    }


def test_a_study_reads_a_kept_seed_only_when_it_finished_with_the_same_settings(tmp_path):
    seeds = _demo_seeds()
    results = _seed_results()
    folder = tmp_path / "seed1"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(results))
    wanted = ("fashion-mnist", 1, "deit_nano_patch7_28", 72)
    assert seeds.finished(folder, *wanted) == results
    assert seeds.finished(folder, "fashion-mnist", 1, "deit_nano_distilled_patch7_28", 72) == results  # its twin
    for other in [
        ("mnist5k", 1, *wanted[2:]),
        ("fashion-mnist", 2, *wanted[2:]),
        (*wanted[:3], None),
        (*wanted[:2], None, 72),
    ]:
        assert seeds.finished(folder, *other) is None, other
    for broken in [{"quick": True}, {"seconds": None}, {"curve": None}]:
        (folder / "results.json").write_text(json.dumps({**results, **broken}))
        assert seeds.finished(folder, *wanted) is None, broken
    (folder / "results.json").write_text('{"data_set": "fashion-mn')  # unreadable
    assert seeds.finished(folder, *wanted) is None
    assert seeds.finished(tmp_path / "none", *wanted) is None

    record = seeds.seed_record(results, "fashion-mnist_deit_nano_patch7_28_72-epochs", "python ...", "alone")
    assert record["benchmark"] == "demo_fashion-mnist_deit_nano_patch7_28_72-epochs_seed1"
    assert record["note"] == "alone" and record["command"] == "python ..."
    assert {k: record[k] for k in results if k != "quick"} == {k: v for k, v in results.items() if k != "quick"}
    assert str(seeds.points((75.6 + 75.8 + 73.9) / 3 - (74.9 + 75.2 + 75.2) / 3)) == "0.0"  # a tie, not -0.0


def test_a_study_reads_a_seed_whose_folder_is_gone_from_this_machines_newest_record_of_it(tmp_path):
    seeds = _demo_seeds()
    name = "fashion-mnist_deit_nano_patch7_28_72-epochs"
    results = _seed_results()
    wanted = ("fashion-mnist", 1, "deit_nano_patch7_28", 72)
    assert seeds.recorded(tmp_path, name, *wanted) is None  # none yet
    older = seeds.save_record({**seeds.seed_record(results, name, "python ...", None), "date": "2026-12-06"}, tmp_path)
    newer = seeds.seed_record({**results, "seconds": 3600.0}, name, "python ...", None)
    newer_path = seeds.save_record({**newer, "date": "2026-12-07"}, tmp_path)
    assert seeds.recorded(tmp_path, name, *wanted)["seconds"] == 3600.0  # the newest
    assert seeds.recorded(tmp_path, name, "fashion-mnist", 1, "deit_nano_distilled_patch7_28", 72)  # its twin
    for other in [("mnist5k", 1, *wanted[2:]), (*wanted[:3], None), (*wanted[:2], None, 72)]:
        assert seeds.recorded(tmp_path, name, *other) is None, other
    assert seeds.recorded(tmp_path, name, "fashion-mnist", 2, *wanted[2:]) is None  # another seed's file name
    # the newest broken (cut short, or of other settings under the name): the older one is read
    newest = tmp_path / older.name.replace("2026-12-06", "2026-12-08")
    for broken in ['{"data_set": "fashion-mn', json.dumps({**newer, "curve": None})]:
        newest.write_text(broken)
        assert seeds.recorded(tmp_path, name, *wanted)["seconds"] == 3600.0
    other_machine = tmp_path / older.name.replace(seeds.slug(seeds.machine()), "intel-xeon-2-cores")
    older.rename(other_machine)
    newest.unlink()
    newer_path.unlink()
    assert seeds.recorded(tmp_path, name, *wanted) is None  # another machine's seed is not mixed in
