"""`deit predict`: the same accuracy as evaluation on the demo's test digits, class names from training, bad files."""

import json

import pytest
import torch
from PIL import Image

import deit
from deit.cli import main
from deit.data import build_dataset, eval_transform
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
