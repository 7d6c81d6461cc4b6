"""`deit predict`: the same accuracy as evaluation on the demo's test digits, class names from training, bad files."""

import json

import pytest
import torch
from PIL import Image

import deit
from deit.cli import main
from deit.data import build_dataset, eval_transform
from deit.data.datasets import first_per_class
from deit.engine import evaluate


@pytest.mark.smoke
def test_predict_gives_evaluations_accuracy_and_reports_bad_files(trained, tmp_path, capsys):
    val, info = build_dataset("mnist5k", None, False)
    keep = list(range(len(val)))  # the 1,000 test digits
    folder = tmp_path / "digits"
    for i in keep:
        (folder / str(val.targets[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(val.images[i], "L").save(folder / str(val.targets[i]) / f"{i}.png")
    (folder / "7" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "7" / "notes.jpg").write_text("text, not an image")

    code = main(["predict", str(folder), "--weights", str(trained), "--json", "--topk", "3"])
    out, err = capsys.readouterr()
    assert code == 1  # something failed: the exit code says so
    assert [line.split(": ")[2] for line in err.strip().splitlines()] == [
        str(folder / "7" / "broken.png"),
        str(folder / "7" / "notes.jpg"),
    ]
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == len(keep)  # every readable image, despite the bad ones
    assert all(len(r["topk"]) == 3 and r["topk"][0]["probability"] >= r["topk"][1]["probability"] for r in rows)
    predicted = sum(r["topk"][0]["label"] == r["path"].split("/")[-2] for r in rows) / len(rows)

    # the same digits through `deit eval`
    out = tmp_path / "eval"
    assert (
        main(
            ["eval", "--weights", str(trained), "--data-set", "mnist5k", "--num_workers", "0", "--output_dir", str(out)]
        )
        == 0
    )
    report = json.loads((out / "eval.json").read_text())
    assert report["images"] == len(keep) and 100 * predicted == pytest.approx(report["acc1"], abs=1e-9)
    assert sum(map(sum, report["confusion"])) == len(keep) and list(report["per_class_acc1"]) == info.class_names
    assert 10 < report["acc1"] <= report["acc5"] <= 100
    with Image.open(out / "confusion.png") as picture:
        assert min(picture.size) > 300
    # and the evaluation of training (the same preprocessing)
    model = deit.create_model(pretrained=trained)
    val.transform = eval_transform(28, mean=info.mean, std=info.std, crop_ratio=1.0)
    loader = torch.utils.data.DataLoader(val, batch_size=64)
    assert evaluate(model, loader, device=torch.device("cpu"))["acc1"] == pytest.approx(report["acc1"], abs=1e-9)


def test_eval_refuses_data_of_other_classes(trained, tmp_path, capsys):
    for split in ("train", "val"):
        for name in ("cat", "dog", "owl"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("L", (28, 28)).save(tmp_path / split / name / "a.png")
    assert (
        main(
            [
                "eval",
                "--weights",
                str(trained),
                "--data-set",
                "folder",
                "--data-path",
                str(tmp_path),
                "--num_workers",
                "0",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "predicts 10 classes but folder has 3" in err


def test_predict_prints_a_table_with_class_names(trained, tmp_path, capsys):
    val, _ = build_dataset("mnist5k", None, False)
    Image.fromarray(val.images[0], "L").save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--weights", str(trained), "--topk", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(tmp_path / "a.png")) and line.count("%") == 2
    assert main(["predict", str(tmp_path / "missing.png"), "--weights", str(trained)]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_every_evaluation_of_a_model_gives_its_runs_top1(tmp_path, capsys):
    """On images of another size than the model's, with the folder's eval crop (0.875): the run's own evaluation,
    the demo's heads (their average is what the model answers), `deit eval` and `deit predict` prepare each image
    alike and give the same top-1."""
    from deit.demo.results import head_accuracy
    from deit.evaluation import evaluation_report

    train, _ = build_dataset("mnist5k", None, True, labels_per_class=20)
    val, _ = build_dataset("mnist5k", None, False)
    val.keep(first_per_class(val.targets, 30))
    data = tmp_path / "digits"
    for split, images, targets in (("train", train.images, train.targets), ("val", val.images, val.targets)):
        for i, (image, target) in enumerate(zip(images, targets)):
            (data / split / str(target)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, "L").resize((36, 36), Image.BICUBIC).save(data / split / str(target) / f"{i}.png")
    common = ["--data-set", "folder", "--data-path", str(data), "--num_workers", "0", "--batch-size", "32"]
    common += ["--aa", "none", "--mixup", "0", "--reprob", "0", "--no-model-ema", "--warmup-epochs", "0.5"]
    common += ["--repeat", "5"]
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    assert main(["train", "--model", "small_cnn", "--input-size", "28", "--epochs", "3", "--lr", "0.1", *common,
                 "--output_dir", str(teacher)]) == 0  # fmt: skip
    hard = ["--distillation-type", "hard", "--teacher-path", str(teacher)]
    assert main(["train", "--model", "deit_pico_distilled_patch7_28", "--epochs", "2", "--lr", "0.032", *common,
                 *hard, "--output_dir", str(student)]) == 0  # fmt: skip
    logged = json.loads((student / "log.jsonl").read_text().splitlines()[-1])["test_acc1"]
    model = deit.create_model(pretrained=student / "checkpoint.pth")
    assert model.data_config["eval_crop_ratio"] == 0.875  # the crop the folder's default recipe evaluates with

    heads = head_accuracy(student, "folder", str(data))
    report = evaluation_report(model, "folder", str(data), num_workers=0)
    capsys.readouterr()
    assert main(["predict", str(data / "val"), "--weights", str(student), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    predicted = 100 * sum(r["topk"][0]["label"] == r["path"].split("/")[-2] for r in rows) / len(rows)
    assert len(rows) == report["images"] == 300
    # the test can fail: prepared another way (the whole image, as the demo's heads once were), answers change
    whole = eval_transform(28, mean=model.data_config["mean"], std=model.data_config["std"], crop_ratio=1.0)
    changed = 0
    with torch.no_grad():
        for row in rows:
            with Image.open(row["path"]) as image:
                changed += model.eval()(whole(image.convert("RGB"))[None]).argmax().item() != int(
                    row["topk"][0]["label"]
                )
    assert changed > 0, logged
    assert heads["average"] == pytest.approx(logged, abs=0.01)  # results.json rounds to 2 decimals
    assert report["acc1"] == pytest.approx(logged, abs=1e-9) and predicted == pytest.approx(logged, abs=1e-9)
