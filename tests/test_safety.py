"""Nothing lost, nothing hangs: each mistake a user can make (or meet) gets one line, and no run loses its data.

The numbers in the test names are the items of the reliability issue they reproduce.
"""

import hashlib
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, read_log
from PIL import Image

import deit
from deit.checkpoint import read_log as epochs_in
from deit.cli import main
from deit.data import build_dataset
from deit.data.datasets import ImageFolderDataset
from deit.data.images import image_files, read_image, to_8bit
from deit.files import LOCK, FolderLock, atomic_write

TINY = ["--model", "deit_pico_patch4_28", *FAST, "--labels-per-class", "10"]  # 100 digits: 3 steps an epoch
SRC = str(Path(__file__).parents[1] / "src")


def snapshot(folder: Path) -> dict:
    """Every file under `folder`: its size and content digest."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"deit {command}: error: "), err
    return err[0]


def digit_files(folder: Path, per_class: int, classes: int = 10) -> list[Path]:
    """The first `per_class` test digits of each class as PNGs under folder/<class>/."""
    val, _ = build_dataset("mnist5k", None, False)
    paths = []
    for digit in range(classes):
        for index in [i for i, t in enumerate(val.targets) if t == digit][:per_class]:
            paths.append(folder / str(digit) / f"{index}.png")
            paths[-1].parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(val.images[index], "L").save(paths[-1])
    return paths


def bomb(path: Path, side: int = 50_000) -> Path:
    """A PNG whose header declares side x side pixels (a decompression bomb), in a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


# --- 2: resume ---------------------------------------------------------------------------------------------------


def test_2_resume_writes_into_the_folder_it_resumes_never_into_another_run(tmp_path, capsys):
    a = tmp_path / "a"
    assert main(["train", *TINY, "--epochs", "1", "--output_dir", str(a)]) == 0
    original = snapshot(a)
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    assert main(["train", "--resume", str(copy), "--epochs", "2"]) == 0  # the copy continues, in the copy
    assert snapshot(a) == original
    assert [line["epoch"] for line in read_log(copy)] == [0, 1]
    assert torch.load(copy / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert f"output_dir: {copy}" in (copy / "config.yaml").read_text()

    b = tmp_path / "b"  # a finished run of its own
    assert main(["train", *TINY, "--epochs", "2", "--output_dir", str(b)]) == 0
    finished = snapshot(b)
    capsys.readouterr()
    assert main(["train", "--resume", str(a), "--epochs", "2", "--output_dir", str(b)]) == 2
    assert "holds another run" in one_error(capsys, "train")
    assert snapshot(b) == finished and snapshot(a) == original

    fork = tmp_path / "fork"  # a folder without a run: the run continues there, its source untouched
    assert main(["train", "--resume", str(a), "--epochs", "2", "--output_dir", str(fork)]) == 0
    assert snapshot(a) == original
    assert [line["epoch"] for line in read_log(fork)] == [0, 1] and read_log(fork)[0] == read_log(a)[0]


# --- 3: convert and export -------------------------------------------------------------------------------------


def test_3_convert_and_export_never_overwrite_their_source_or_a_run(trained, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained, run / "checkpoint.pth")
    before = snapshot(run)
    cases = [
        (["convert", str(run / "checkpoint.pth"), str(run / "checkpoint.pth"), "--to", "timm"], "source being read"),
        (["convert", str(run), str(run), "--to", "deit"], "holds a training run"),
        (["convert", str(run), str(run), "--to", "hf"], "holds a training run"),
        (
            ["export", "--weights", str(run / "checkpoint.pth"), "--format", "onnx", "-o", str(run / "checkpoint.pth")],
            "source being read",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in one_error(capsys, argv[0])
    assert snapshot(run) == before
    # elsewhere it converts; a converted file is not written over itself either
    assert main(["convert", str(run), str(tmp_path / "timm.safetensors"), "--to", "timm"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "convert",
                str(tmp_path / "timm.safetensors"),
                str(tmp_path / "timm.safetensors"),
                "--to",
                "timm",
                "--model",
                "deit_pico_patch7_28",
            ]
        )
        == 2
    )
    assert "source being read" in one_error(capsys, "convert")


# --- 4: a run owns its folder ----------------------------------------------------------------------------------


def test_4_a_second_run_into_a_folder_in_use_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys, time; sys.path.insert(0, {SRC!r}); from deit.files import FolderLock;"
            f"FolderLock({str(out)!r}, 'deit train').acquire(); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", *TINY, "--epochs", "1", "--output_dir", str(out)]) == 2
        line = one_error(capsys, "train")
        assert f"is in use by deit train (pid {holder.pid} on " in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing written by the refused run
    finally:
        holder.kill()  # dies holding the lock: the kernel drops it, the file stays behind
        holder.wait()
    # what a killed writer leaves: its lock file and half a checkpoint under its temporary name
    (out / ".checkpoint.pth.k1ll3d00.tmp").write_bytes(b"half a checkpoint")
    (out / ".mine.tmp").write_text("not deit's")
    assert (out / LOCK).exists()
    assert main(["train", *TINY, "--epochs", "1", "--output_dir", str(out)]) == 0
    assert not (out / ".checkpoint.pth.k1ll3d00.tmp").exists() and (out / ".mine.tmp").exists()
    assert not (out / LOCK).exists()  # released at the end of the run


def test_4_writes_of_one_file_at_once_each_use_their_own_temporary(tmp_path):
    target = tmp_path / "state.txt"

    def outer(tmp: Path):
        tmp.write_text("outer")
        atomic_write(target, lambda inner: inner.write_text("inner"))  # a second writer, mid-write of the first

    atomic_write(target, outer)
    assert target.read_text() == "outer" and [p.name for p in tmp_path.iterdir()] == ["state.txt"]
    with FolderLock(tmp_path, "test"), pytest.raises(ValueError, match=r"in use by test \(pid \d+ on"):
        FolderLock(tmp_path, "other").acquire()


# --- 5: attention pictures ---------------------------------------------------------------------------------------


def test_5_attention_pictures_of_files_with_one_name_do_not_overwrite_each_other(trained, tmp_path, capsys):
    val, _ = build_dataset("mnist5k", None, False)
    inputs = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "a" / "x.jpg"]
    for i, path in enumerate(inputs):
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(val.images[i], "L").save(path)
    assert main(["attention", *map(str, inputs), "--weights", str(trained), "-o", str(tmp_path / "maps")]) == 0
    assert "wrote 3 heat-map picture(s)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [
        "a_x_jpg_attention.png",
        "a_x_png_attention.png",
        "b_x_attention.png",
    ]


# --- 6: evaluation with unreadable images ---------------------------------------------------------------------


def test_6_eval_leaves_unreadable_images_out_and_says_so(trained, tmp_path, capsys):
    files = digit_files(tmp_path / "set" / "val", 2)  # in val/ alone: the classes come from its own folders
    (tmp_path / "set" / "val" / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "set" / "val" / "5" / "text.jpg").write_text("a note, not an image")
    (tmp_path / "set" / "val" / "7" / "cut.png").write_bytes(files[14].read_bytes()[:60])
    code = main(
        [
            "eval",
            "--weights",
            str(trained),
            "--data-set",
            "folder",
            "--data-path",
            str(tmp_path / "set"),
            "--num_workers",
            "0",
            "--batch-size",
            "8",
            "--output_dir",
            str(tmp_path / "eval"),
        ]
    )
    assert code == 1  # part of the input could not be read
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["images"] == 20 and report["unreadable"] == 3
    assert "20 images of folder (3 unreadable images left out)" in capsys.readouterr().out
    # the readable images alone, predicted one by one: the same top-1
    from deit.predict import predict

    predictions, errors = predict(deit.create_model(pretrained=trained), files)
    right = sum(p.labels[0] == Path(p.path).parent.name for p in predictions)
    assert not errors and report["acc1"] == pytest.approx(100 * right / 20, abs=1e-9)


# --- 8: decompression bombs ----------------------------------------------------------------------------------


def test_8_a_decompression_bomb_among_good_files_is_one_error_line(trained, tmp_path, capsys):
    good = digit_files(tmp_path / "images", 1, classes=3)
    bad = bomb(tmp_path / "images" / "bomb.png")
    with pytest.raises(ValueError, match="bomb.png: not a readable image \\(DecompressionBombError"):
        read_image(bad, "L")
    assert main(["predict", str(tmp_path / "images"), "--weights", str(trained), "--json"]) == 1
    out, err = capsys.readouterr()
    assert [json.loads(line)["path"] for line in out.splitlines()] == sorted(map(str, good))
    assert len(err.strip().splitlines()) == 1 and "bomb.png" in err and "DecompressionBombError" in err
    assert main(["attention", str(tmp_path / "images"), "--weights", str(trained), "-o", str(tmp_path / "maps")]) == 1
    assert len(list((tmp_path / "maps").glob("*.png"))) == 3 and "bomb.png" in capsys.readouterr().err


# --- 9: symbolic link loops ------------------------------------------------------------------------------------


def test_9_symlink_loops_in_an_image_folder_neither_repeat_images_nor_hang(tmp_path, capsys):
    root = tmp_path / "digits"
    for split in ("train", "val"):
        digit_files(root / split, 4)
    (root / "train" / "0" / "loop").symlink_to("..")  # back to train/: would pull every class in, again and again
    (root / "train" / "1" / "self").symlink_to(".")
    (root / "train" / "2" / "up").symlink_to(root)
    real = [f for f in (root / "train").rglob("*.png")]  # rglob does not follow the links
    dataset = ImageFolderDataset(root / "train", grayscale=True)
    assert len(dataset) == len(real)
    assert sorted(Path(p).name for p, _ in dataset.samples) == sorted(p.name for p in real)
    assert sorted(map(str, image_files([root / "train"]))) == sorted(
        os.path.join(dp, f) for dp, _, names in os.walk(root / "train") for f in names
    )
    assert (
        main(
            [
                "train",
                "--model",
                "deit_pico_patch4_28",
                "--data-set",
                "folder",
                "--data-path",
                str(root),
                "--grayscale",
                "--num_workers",
                "0",
                "--batch-size",
                "8",
                "--epochs",
                "1",
                "--no-model-ema",
                "--output_dir",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    assert f"{len(real)} images" in capsys.readouterr().out


# --- 10: config values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("run:\n  epochs: ten\n", "run.epochs='ten' must be a whole number"),
        ("run: 5\n", "config section 'run' must be a mapping of field: value, not 5"),
        ("run:\n  epochs: .nan\n", "run.epochs=nan must be a finite number"),
        ("run:\n  epochs: 1.5\n", "run.epochs=1.5 must be a whole number"),
        ("run:\n  epochs: true\n", "run.epochs=True must be a whole number"),
        ("run:\n  batch_size: 16.9\n", "run.batch_size=16.9 must be a whole number"),
        ("optim:\n  lr: [1, 2]\n", "optim.lr=[1, 2] must be a number"),
        ("model:\n  model: 5\n", "model.model=5 must be a string"),
        ("aug:\n  aa: bogus\n", "aug.aa='bogus' is not a timm augmentation policy"),
        ("run:\n  seed: -1\n", "run.seed=-1 must be a whole number >= 0"),
        ("data:\n  num_workers: 100000\n", "data.num_workers=100000 must be between 0 and 256"),
        ("optim:\n  opt: adamz\n", "optim.opt='adamz' is not an optimizer"),
        ("run:\n  device: gpu\n", "run.device='gpu' must be auto, cpu, cuda or cuda:N"),
        ("1: 2\n", "config section 1 must be a mapping"),
        ("optimizer:\n  lr: 1\n", "unknown config section(s) 'optimizer'"),
        ("- a\n", "must hold a mapping of sections"),
    ],
)
def test_10_yaml_values_are_checked_for_type_and_range_before_any_work(tmp_path, capsys, text, message):
    (tmp_path / "preset.yaml").write_text(text)
    assert main(["train", "--config", str(tmp_path / "preset.yaml"), "--output_dir", str(tmp_path / "run")]) == 2
    assert message in one_error(capsys, "train")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_10_numbers_written_as_text_are_numbers_and_flags_are_checked_alike(tmp_path, capsys):
    from deit.config import TrainConfig, load_yaml

    (tmp_path / "preset.yaml").write_text("optim:\n  lr: 1e-3\nrun:\n  epochs: '10'\n")  # YAML reads 1e-3 as text
    cfg = TrainConfig.from_dict(load_yaml(tmp_path / "preset.yaml"))
    assert cfg.optim.lr == 0.001 and cfg.run.epochs == 10
    with pytest.raises(SystemExit) as info:  # argparse's own check, on one line
        main(["train", "--epochs", "ten"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --epochs: invalid int value: 'ten'" in err[0]
    for argv, message in (
        (["--lr", "nan"], "optim.lr=nan must be a finite number"),
        (["--batch-size", "0"], "run.batch_size=0 must be >= 1"),
    ):
        assert main(["train", *argv]) == 2
        assert message in one_error(capsys, "train")


# --- 11: more than 8 bits ------------------------------------------------------------------------------------


def test_11_16_bit_and_float_images_are_scaled_not_saturated(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    full = np.asarray(read_image(tmp_path / "ramp16.png", "L", "full"))
    assert np.array_equal(full, np.rint(ramp / 65535 * 255).astype(np.uint8))  # not 99.6% white as Pillow gives
    stretched = np.asarray(read_image(tmp_path / "ramp16.png", "L", "minmax"))
    assert stretched.min() == 0 and stretched.max() == 255 and (stretched == 255).mean() < 0.01
    dim = (ramp // 16).astype(np.uint16)  # a 12-bit image in a 16-bit file: its own range stretched
    Image.fromarray(dim).save(tmp_path / "dim16.png")
    assert np.array_equal(np.asarray(read_image(tmp_path / "dim16.png", "L")), to_8bit(dim, "minmax"))
    floats = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(floats).save(tmp_path / "float.tif")
    assert np.array_equal(
        np.asarray(read_image(tmp_path / "float.tif", "L", "full")), np.rint(floats * 255).astype(np.uint8)
    )
    rgb = read_image(tmp_path / "ramp16.png", "RGB")
    assert rgb.mode == "RGB" and np.array_equal(np.asarray(rgb)[..., 1], stretched)


def test_11_a_digit_saved_at_16_bits_is_predicted_as_at_8_bits(trained, tmp_path, capsys):
    val, _ = build_dataset("mnist5k", None, False)
    index = next(i for i, image in enumerate(val.images) if image.min() == 0 and image.max() == 255)
    Image.fromarray(val.images[index], "L").save(tmp_path / "digit8.png")
    Image.fromarray(val.images[index].astype(np.uint16) * 257).save(tmp_path / "digit16.png")
    assert (
        main(
            [
                "predict",
                str(tmp_path / "digit8.png"),
                str(tmp_path / "digit16.png"),
                "--weights",
                str(trained),
                "--json",
            ]
        )
        == 0
    )
    eight, sixteen = (json.loads(line)["topk"] for line in capsys.readouterr().out.splitlines())
    assert eight == sixteen


# --- 12: stopping the demo ---------------------------------------------------------------------------------------


def descendants(pid: int) -> set[int]:
    """Live processes under `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.add(pid)
    return living


DEMO_LANES = """
import sys
sys.path.insert(0, {src!r})
from deit.config import TrainConfig, merge
from deit.demo.lanes import train_side_by_side
from deit.demo.plan import Job
from deit.failures import run_command

def job(name):
    values, explicit = merge({{}}, {{"model.model": "deit_pico_patch4_28", "data.data_set": "folder",
        "data.data_path": {data!r}, "data.grayscale": True, "data.num_workers": 1, "run.batch_size": 8,
        "run.epochs": 500, "optim.model_ema": False, "run.output_dir": {out!r} + "/" + name}})
    return Job(name, TrainConfig.from_dict(values, explicit), {{"method": name}})

if __name__ == "__main__":  # the students' processes are spawned: they import this file again
    jobs = [job("none"), job("soft")]
    sys.exit(run_command("demo", lambda: train_side_by_side(jobs, __import__("pathlib").Path({out!r}), lanes=2)))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_12_a_stopped_demo_stops_every_student_process_within_seconds(tmp_path, sig):
    from conftest import write_digit_folder

    write_digit_folder(tmp_path / "digits")
    out = tmp_path / "demo"
    script = tmp_path / "lanes.py"
    script.write_text(DEMO_LANES.format(src=SRC, data=str(tmp_path / "digits"), out=str(out)))
    # started with Ctrl-C's default effect, as from a terminal: a shell starts background jobs (a CI script's `&`,
    # nohup) with SIGINT ignored, and a child keeps that, so the demo would never see this test's SIGINT
    demo = subprocess.Popen(
        [sys.executable, str(script)],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(epochs_in(out / n / "log.jsonl") for n in ("none", "soft")):
            time.sleep(0.5)
        family = descendants(demo.pid)
        assert len(family) >= 4, family  # two students, each with its loader process (and spawn's helpers)
        demo.send_signal(sig)  # to the demo alone, as `kill` and job schedulers do
        start = time.monotonic()
        code = demo.wait(timeout=30)
        while alive(family) and time.monotonic() - start < 15:
            time.sleep(0.2)
        assert not alive(family), f"still running after {time.monotonic() - start:.0f} s: {alive(family)}"
        assert code == 130 and demo.stderr.read().strip().splitlines()[-1] == "deit demo: interrupted"
    finally:
        for pid in alive(descendants(demo.pid)) | {demo.pid}:
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- 13: the smaller ones --------------------------------------------------------------------------------------


def test_13_a_full_disk_is_one_line_and_the_last_checkpoint_stays(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--output_dir", str(out)]) == 0
    shutil.copytree(out, tmp_path / "kept")
    checkpoint = (out / "checkpoint.pth").stat().st_size

    def small_disk():  # in the child: files may grow to half a checkpoint (a disk that fills up mid-write)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (checkpoint // 2, checkpoint // 2))

    result = subprocess.run(
        [sys.executable, "-m", "deit", "train", "--resume", str(out), "--epochs", "3"],
        capture_output=True,
        text=True,
        preexec_fn=small_disk,
    )
    lines = result.stderr.strip().splitlines()  # a note that the run resumes, then the error
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert (
        lines[-1].startswith(f"deit train: error: cannot write {out / 'checkpoint.pth'} (")
        and "free on its disk" in lines[-1]
    )
    state = torch.load(out / "checkpoint.pth", weights_only=True)  # the last complete checkpoint, intact
    assert state["epoch"] == 1 and not list(out.glob(".*.tmp"))
    for key, value in torch.load(tmp_path / "kept" / "checkpoint.pth", weights_only=True)["model"].items():
        assert torch.equal(state["model"][key], value)


def test_13_counts_are_checked_on_the_command_line(trained, tmp_path, capsys):
    digit_files(tmp_path / "images", 1, classes=1)
    for argv in (["--topk", "-3"], ["--batch-size", "0"]):
        with pytest.raises(SystemExit) as info:
            main(["predict", str(tmp_path / "images"), "--weights", str(trained), *argv])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "must be at least 1" in err[0] and argv[0] in err[0]


def test_13_a_folder_of_one_class_is_refused(tmp_path, capsys):
    for split in ("train", "val"):
        digit_files(tmp_path / "one" / split, 3, classes=1)
    assert (
        main(
            [
                "train",
                "--model",
                "deit_pico_patch4_28",
                "--data-set",
                "folder",
                "--data-path",
                str(tmp_path / "one"),
                "--epochs",
                "1",
            ]
        )
        == 2
    )
    assert "has one class folder" in one_error(capsys, "train")


def test_13_resume_from_random_bytes_is_one_plain_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pth").write_bytes(os.urandom(4096))
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    line = one_error(capsys, "train")
    assert "not a PyTorch checkpoint" in line or "cannot read" in line
    assert "weights_only" not in line and "Unpickler" not in line


def test_13_a_run_that_diverges_in_its_first_epoch_says_no_checkpoint_was_written(tmp_path, capsys, monkeypatch):
    import deit.train as train_module

    real = train_module.DistillationLoss.parts

    def poisoned(self, *args, **kwargs):  # the loss of the second step is NaN
        parts = real(self, *args, **kwargs)
        poisoned.calls += 1
        return {**parts, "loss": parts["loss"] * float("nan")} if poisoned.calls == 2 else parts

    poisoned.calls = 0
    monkeypatch.setattr(train_module.DistillationLoss, "parts", poisoned)
    assert main(["train", *TINY, "--output_dir", str(tmp_path / "run")]) == 1
    line = one_error(capsys, "train")
    assert "the loss is nan at epoch 0, step 1" in line and "no checkpoint was written" in line
    assert "kept" not in line


def test_13_class_names_with_terminal_escapes_are_printed_escaped(tmp_path, capsys):
    model = deit.create_model("deit_pico_patch4_28", num_classes=10, in_chans=1)
    model.data_config = {"class_names": [f"\x1b[2J\x1b[31mclass {i}\nforged line" for i in range(10)]}
    deit.save_weights(model, tmp_path / "model")
    digit_files(tmp_path / "images", 1, classes=2)
    assert main(["predict", str(tmp_path / "images"), "--weights", str(tmp_path / "model")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and len(out.strip().splitlines()) == 2 and "\\x1b[31mclass" in out


@pytest.mark.parametrize(
    "text",
    [
        "CUDA out of memory. Tried to allocate 2.00 GiB",
        "[enforce fail at alloc_cpu.cpp:127] err == 0",  # the CPU allocator under `ulimit -v`
        "DefaultCPUAllocator: not enough memory: you tried to allocate 1024 bytes.",
        "DataLoader worker (pid 12) is killed by signal: Killed. ",  # the kernel's OOM killer took a loader process
    ],
)
def test_an_allocation_that_fails_is_named_out_of_memory_not_a_bug(text, capsys):
    from deit.failures import FAILED, run_command

    def fails():
        raise RuntimeError(text)

    assert run_command("train", fails) == FAILED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out of memory" in err and "internal error" not in err, err


def test_a_yaml_config_past_its_bounds_is_one_line(tmp_path, capsys):
    """Aliases of aliases (a 'billion laughs') name 10^9 values in 200 bytes: refused once counted past the bound
    (it ended in an out-of-memory line); a file over 1 MiB before it is read; nesting too deep for the parser."""
    from deit.config import MAX_YAML_BYTES, MAX_YAML_VALUES

    value = "[&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]" + "".join(
        f", &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)
    )
    cases = {
        "laughs.yaml": (f"optim:\n  lr: {value}]\n", f"more than {MAX_YAML_VALUES:,} values"),
        "deep.yaml": ("[" * 100_000, "nests its values too deeply"),
        "large.yaml": ("# " + "x" * MAX_YAML_BYTES + "\n", f"over the {MAX_YAML_BYTES:,}"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        assert main(["train", "--config", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
