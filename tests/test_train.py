"""`deit train` end to end on the shipped MNIST digits: teacher, distilled student, resume, DDP, bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest
import short_runs
import torch
from conftest import FAST, assert_same_run, interrupted_then_resumed, read_log, write_digit_folder

import deit
import deit.train as train_module
from deit.cli import main
from deit.config import TrainConfig, merge
from deit.engine import NonFiniteLoss, Views
from deit.train import run


def config(**dotted) -> TrainConfig:
    base = {
        "data.data_set": "mnist5k",
        "data.num_workers": 0,
        "run.batch_size": 32,
        "optim.warmup_epochs": 0.5,
        "optim.model_ema": False,
        "optim.lr": 0.02,
    }
    values, explicit = merge({}, {**base, **dotted})
    return TrainConfig.from_dict(values, explicit)


def test_teacher_then_hard_distilled_student(teacher, tmp_path):
    # bounds from the spread over 10 seeds (benchmarks/seed_spread.py, docs/tests.md): the teacher 89.5 +- 1.5,
    # the student 53.3 +- 6.6 (43.9 to 64.8); each bound over 5 standard deviations below the mean; chance is 10%
    teacher_log = read_log(teacher)
    assert len(teacher_log) == 2 and teacher_log[-1]["test_acc1"] > 80
    out = tmp_path / "student"
    log = short_runs.hard_distilled_student(out, teacher)
    assert [line["epoch"] for line in log] == [0, 1, 2]
    assert log[-1]["test_acc1"] > 20
    for key in (
        "lr",
        "train_loss",
        "base_loss",
        "distill_loss",
        "test_acc1",
        "test_acc5",
        "ema_acc1",
        "n_parameters",
        "images_per_s",
    ):
        assert key in log[-1], key
    saved = (out / "config.yaml").read_text()
    assert "distillation_type: hard" in saved and "hflip: 0.0" in saved  # resolved, digits' defaults included
    assert list((out / "tensorboard").iterdir())
    assert not list(out.glob(".*.tmp"))
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert state["epoch"] == 2 and state["deit_config"]["data"]["class_names"][3] == "3"
    student = deit.create_model(pretrained=out / "checkpoint.pth")  # a training checkpoint is a weights file too
    assert student.model_name == "deit_pico_distilled_patch4_28"


@pytest.mark.smoke
@pytest.mark.parametrize("batch_aug", [False, True], ids=["per-image", "batch-aug"])
def test_resume_after_an_interruption_gives_the_uninterrupted_result(tmp_path, monkeypatch, batch_aug):
    settings = {
        "model.model": "deit_pico_patch4_28",
        "data.labels_per_class": 20,
        "run.epochs": 3,
        "optim.model_ema": True,
        "optim.model_ema_decay": 0.9,
        "aug.mixup": 0.8,
        "aug.cutmix": 1.0,
        "model.drop_path": 0.1,
        "aug.batch_aug": batch_aug,
    }
    run(config(**settings, **{"run.output_dir": str(tmp_path / "whole")}))

    def config_for(out, resume):
        return config(**settings, **{"run.output_dir": str(out), **({"run.resume": str(resume)} if resume else {})})

    interrupted_then_resumed(monkeypatch, config_for, tmp_path / "split", stop_epoch=2)  # Ctrl-C in the third epoch
    assert_same_run(tmp_path / "whole", tmp_path / "split")


def test_gradient_accumulation_equals_the_larger_batch(tmp_path, monkeypatch):
    """Two accumulated half batches give the gradient of the whole batch (the loss is a mean: linear in the
    images), hence the same optimizer steps. The gradients are compared as each step takes them, and the weights
    after a run with SGD, which moves a weight by lr x its gradient. Not with AdamW: it divides each gradient by its
    own running size, so where a gradient is zero by the maths (the key bias of every block: softmax ignores a
    shift shared by all keys) it turns float noise of ~1e-10, which differs from one CPU to another, into steps."""
    grads = {"big": [], "acc": []}
    real_step = torch.optim.SGD.step

    def recording(which):
        def step(self, *args, **kwargs):
            grads[which].append([p.grad.clone() for group in self.param_groups for p in group["params"]])
            return real_step(self, *args, **kwargs)

        return step

    settings = {
        "model.model": "deit_pico_patch4_28",
        "data.labels_per_class": 16,
        "run.epochs": 1,
        "model.drop_path": 0.0,
        "aug.mixup": 0.0,
        "aug.cutmix": 0.0,
        "optim.opt": "momentum",
    }
    monkeypatch.setattr(torch.optim.SGD, "step", recording("big"))
    run(config(**settings, **{"run.output_dir": str(tmp_path / "big")}))
    monkeypatch.setattr(torch.optim.SGD, "step", recording("acc"))
    run(config(**settings, **{"run.batch_size": 16, "optim.accum_iter": 2, "run.output_dir": str(tmp_path / "acc")}))

    assert len(grads["big"]) == len(grads["acc"]) == 5  # 160 images, 32 a step
    for big, acc in zip(grads["big"], grads["acc"]):
        # float error of a mean over 32 images: a few ulps of the largest gradient entry, on any CPU
        scale = max(g.abs().max() for g in big)
        for g_big, g_acc in zip(big, acc):
            assert torch.allclose(g_acc, g_big, rtol=1e-4, atol=1e-5 * scale)
    big = torch.load(tmp_path / "big" / "checkpoint.pth", weights_only=True)
    acc = torch.load(tmp_path / "acc" / "checkpoint.pth", weights_only=True)
    assert big["num_updates"] == acc["num_updates"] == 5
    for key in big["model"]:
        assert torch.allclose(big["model"][key], acc["model"][key], rtol=0, atol=1e-6), key


def test_two_cpu_processes_match_one_with_the_same_global_batch(tmp_path):
    # SGD with momentum: a step is linear in the gradient, so the all-reduced gradient of two processes moves the
    # weights as one process does, within float error (AdamW would amplify the float noise of the key biases'
    # zero gradients; see the accumulation test)
    args = [
        "--model",
        "deit_pico_patch4_28",
        "--data-set",
        "mnist5k",
        "--labels-per-class",
        "24",
        "--epochs",
        "2",
        "--num_workers",
        "0",
        "--warmup-epochs",
        "0.5",
        "--lr",
        "0.02",
        "--mixup",
        "0",
        "--cutmix",
        "0",
        "--drop-path",
        "0",
        "--no-repeated-aug",
        "--model-ema",
        "--model-ema-decay",
        "0.9",
        "--device",
        "cpu",
        "--opt",
        "momentum",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "deit", "train", *args, "--batch-size", "32", "--output_dir", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            "-m",
            "deit",
            "train",
            *args,
            "--batch-size",
            "16",
            "--output_dir",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    for a, b in zip(one, two):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_acc1"] == pytest.approx(b["test_acc1"], abs=0.25)
    w1 = torch.load(tmp_path / "one" / "checkpoint.pth", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "two" / "checkpoint.pth", weights_only=True)["model"]
    for key in w1:
        assert torch.allclose(w1[key], w2[key], rtol=0, atol=1e-5), key


def test_eval_and_finetune_with_distillation(teacher, tmp_path, capsys):
    first = tmp_path / "first"
    assert (
        main(
            [
                "train",
                "--model",
                "deit_pico_patch4_28",
                *FAST,
                "--labels-per-class",
                "10",
                "--epochs",
                "1",
                "--output_dir",
                str(first),
            ]
        )
        == 0
    )
    assert main(["train", "--model", "deit_pico_patch4_28", *FAST, "--eval", "--resume", str(first)]) == 0
    assert "top-1" in capsys.readouterr().out
    # fine-tune a plain DeiT's weights into a distilled one, with a teacher: the official code refuses this
    assert (
        main(
            [
                "train",
                "--model",
                "deit_pico_distilled_patch4_28",
                *FAST,
                "--labels-per-class",
                "10",
                "--epochs",
                "1",
                "--finetune",
                str(first / "checkpoint.pth"),
                "--distillation-type",
                "soft",
                "--distillation-tau",
                "3",
                "--teacher-path",
                str(teacher / "checkpoint.pth"),
                "--output_dir",
                str(tmp_path / "tuned"),
            ]
        )
        == 0
    )
    tuned = read_log(tmp_path / "tuned")[0]
    assert tuned["distill_loss"] > 0 and np.isfinite(tuned["test_acc1"])
    # the encoder started from the plain model's weights (three small steps away), not from a fresh init
    start = torch.load(first / "checkpoint.pth", weights_only=True)["model"]["patch_embed.proj.weight"]
    end = torch.load(tmp_path / "tuned" / "checkpoint.pth", weights_only=True)["model"]["patch_embed.proj.weight"]
    fresh = deit.create_model("deit_pico_distilled_patch4_28", num_classes=10, in_chans=1).patch_embed.proj.weight
    assert (end - start).abs().mean() < 0.5 * (fresh.detach() - start).abs().mean()


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = train_module.DistillationLoss.parts
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        parts = real(self, *args, **kwargs)
        if calls["n"] == 10:  # epoch 1 (6 steps per epoch), step 3
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(train_module.DistillationLoss, "parts", poisoned)
    with pytest.raises(NonFiniteLoss, match="at epoch 1, step 3"):
        run(
            config(
                **{
                    "model.model": "deit_pico_patch4_28",
                    "data.labels_per_class": 20,
                    "run.epochs": 3,
                    "run.output_dir": str(out),
                }
            )
        )
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 0
    assert len(read_log(out)) == 1


@pytest.mark.parametrize("batch_aug", [False, True], ids=["per-image", "batch-aug"])
def test_image_folder_run_skips_and_counts_a_corrupt_image(tmp_path, caplog, batch_aug):
    write_digit_folder(tmp_path / "digits", corrupt=True)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                "deit_pico_patch4_28",
                "--data-set",
                "folder",
                "--data-path",
                str(tmp_path / "digits"),
                "--grayscale",
                "--num_workers",
                "0",
                "--batch-size",
                "16",
                "--epochs",
                "1",
                "--no-model-ema",
                "--output_dir",
                str(out),
                *(["--batch-aug"] if batch_aug else []),
            ]
        )
        == 0
    )
    assert read_log(out)[0]["skipped_images"] == 1
    assert "skipping unreadable image" in caplog.text and "broken.png" in caplog.text


def one_line_error(argv) -> str:
    result = subprocess.run([sys.executable, "-m", "deit", "train", *argv], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


def test_bad_input_gets_one_line_naming_problem_and_fix(teacher, tmp_path):
    write_digit_folder(tmp_path / "digits")
    (tmp_path / "digits" / "train" / "class_empty").mkdir()
    (tmp_path / "bad.yaml").write_text("optim:\n  learning_rate: 0.1\n")
    cifar_teacher = tmp_path / "cifar_teacher.pth"
    torch.save(deit.teachers.create_cnn("small_cnn", num_classes=100, in_chans=1).state_dict(), cifar_teacher)
    quick = ["--num_workers", "0", "--epochs", "1"]
    cases = {
        "data path not found": ["--data-set", "folder", "--data-path", str(tmp_path / "nowhere"), *quick],
        "holds no images": ["--data-set", "folder", "--data-path", str(tmp_path / "digits"), *quick],
        "predicts 100 classes but the data has 10": [
            "--model",
            "deit_pico_distilled_patch4_28",
            "--data-set",
            "mnist5k",
            "--distillation-type",
            "hard",
            "--teacher-model",
            "small_cnn",
            "--teacher-path",
            str(cifar_teacher),
            *quick,
        ],
        "is odd, but Mixup/CutMix": ["--data-set", "mnist5k", "--batch-size", "33", *quick],
        "unknown config key optim.learning_rate": ["--config", str(tmp_path / "bad.yaml")],
        "was written by a run of small_cnn": [
            "--model",
            "deit_pico_patch4_28",
            "--data-set",
            "mnist5k",
            "--resume",
            str(teacher),
            *quick,
        ],
        "already holds a run": ["--model", "small_cnn", "--data-set", "mnist5k", "--output_dir", str(teacher), *quick],
        "needs the teacher's weights": [
            "--model",
            "deit_pico_distilled_patch4_28",
            "--data-set",
            "mnist5k",
            "--distillation-type",
            "hard",
            *quick,
        ],
    }
    for expected, argv in cases.items():
        line = one_line_error(argv)
        assert line.startswith("deit train: error: ") and expected in line, line


def test_attention_distillation_run_logs_every_part(teacher, tmp_path):
    out = tmp_path / "attn"
    assert (
        main(
            [
                "train",
                "--model",
                "deit_pico_distilled_patch4_28",
                *FAST,
                "--labels-per-class",
                "20",
                "--epochs",
                "1",
                "--distillation-type",
                "hard",
                "--teacher-path",
                str(teacher),
                "--attn-distillation-weight",
                "1.0",
                "--attn-distillation-layers=-1,-2",
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    line = read_log(out)[0]
    assert line["attn_loss"] > 0 and line["distill_loss"] > 0 and line["base_loss"] > 0
    # and without the token distillation: attention alone, from the same teacher
    assert (
        main(
            [
                "train",
                "--model",
                "deit_pico_patch4_28",
                *FAST,
                "--labels-per-class",
                "20",
                "--epochs",
                "1",
                "--teacher-path",
                str(teacher),
                "--attn-distillation-weight",
                "1.0",
                "--attn-distillation-loss",
                "mse",
                "--output_dir",
                str(tmp_path / "attn_only"),
            ]
        )
        == 0
    )
    line = read_log(tmp_path / "attn_only")[0]
    assert line["attn_loss"] > 0 and "distill_loss" not in line


def test_images_without_labels_are_marked_through_mixup():
    from timm.data import Mixup

    images, cpu = torch.rand(6, 1, 8, 8), torch.device("cpu")
    _, targets, labelled = Views(cpu)(images, torch.tensor([0, -1, 2, 3, 4, -1]), 0, 0)
    assert labelled.tolist() == [True, False, True, True, True, False] and targets.min() >= 0
    mixup = Mixup(mixup_alpha=1.0, num_classes=5, label_smoothing=0.0)
    mixed = Views(cpu, mixup=mixup, seed=lambda epoch, step: 7)
    _, soft, labelled = mixed(images, torch.tensor([0, -1, 2, 3, 4, -1]), 0, 0)
    assert soft.shape == (6, 5)
    assert labelled.tolist() == [False, False, True, True, False, False]  # image i is mixed with image 5 - i
    assert mixed(images, torch.tensor([0, 1, 2, 3, 4, 0]), 0, 0)[2] is None


def test_unlabelled_images_teach_the_student_through_the_teacher(teacher, tmp_path, capsys):
    """50 labelled digits and 3,950 without labels (--unlabelled): the student learns the teacher's answers on all
    of them, ends near its teacher and above the same student trained on the 50 labelled alone for as many steps.
    Over 10 seeds (benchmarks/seed_spread.py): the student minus its teacher 2.3 +- 0.8 points, minus the few-label
    student 11.0 +- 2.5 (7.5 to 16.6); each bound over 4 standard deviations below the mean."""
    top1 = short_runs.unlabelled_against_few_labels(tmp_path, teacher)
    assert "4000 images (50 labelled)" in capsys.readouterr().out
    assert top1["semi"] >= read_log(teacher)[-1]["test_acc1"] - 3 and top1["semi"] > top1["few"]
