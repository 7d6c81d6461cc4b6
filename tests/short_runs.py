"""The short training runs whose accuracy tests assert on, each a function of a folder and a seed.

A run of a few epochs on a few thousand digits is chaotic: another CPU's rounding, like another seed, moves its
accuracy by points (a shards test once passed on one CPU and read 76.8% on another, where seeds had given 87-95%).
So `benchmarks/seed_spread.py` runs each of these over seeds, and each test's bound lies at least 4 standard
deviations of that spread below its mean (benchmarks/results/seed_spread_*.json; docs/tests.md). The tests and the
benchmark call the same functions with the same flags.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Small and fast: few images per class, no workers, no EMA unless asked.
FAST = [
    "--data-set",
    "mnist5k",
    "--num_workers",
    "0",
    "--batch-size",
    "32",
    "--warmup-epochs",
    "0.5",
    "--no-model-ema",
    "--lr",
    "0.02",
]
# lighter augmentation for a ViT's short run on the digits
LIGHT = ["--aa", "none", "--mixup", "0", "--reprob", "0", "--crop-scale", "1"]


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _train(*argv: str) -> None:
    from deit.cli import main

    code = main(["train", *argv])
    assert code == 0, f"deit train exited {code}"


def teacher_argv(out: Path, seed: int = 0) -> list[str]:
    """A small CNN trained on 2,000 digits for 2 epochs (the teacher of the other runs)."""
    return ["--model", "small_cnn", *FAST, "--lr", "0.1", "--labels-per-class", "200", "--epochs", "2",
            "--seed", str(seed), "--output_dir", str(out)]  # fmt: skip


def train_teacher(out: Path, seed: int = 0) -> list[dict]:
    _train(*teacher_argv(out, seed))
    return read_log(out)


def hard_distilled_student(out: Path, teacher: Path, seed: int = 0) -> list[dict]:
    """deit_pico distilled from the teacher for 3 epochs (with EMA and tensorboard, which the test also checks)."""
    _train(
        "--model", "deit_pico_distilled_patch4_28", *FAST, "--lr", "0.032", "--min-lr", "2e-3", "--epochs", "3",
        *LIGHT, "--distillation-type", "hard", "--teacher-path", str(teacher / "checkpoint.pth"), "--model-ema",
        "--model-ema-decay", "0.9", "--seed", str(seed), "--output_dir", str(out), "--tensorboard",
    )  # fmt: skip
    return read_log(out)


def unlabelled_against_few_labels(out: Path, teacher: Path, seed: int = 0) -> dict[str, float]:
    """50 labelled digits and 3,950 without labels (`--unlabelled`, 1 epoch) against the same CNN trained on the 50
    labelled alone for as many steps (125 epochs of one batch): last top-1 of each."""
    common = [
        "--model", "small_cnn", *FAST, "--lr", "0.1", "--aa", "none", "--reprob", "0", "--crop-scale", "1",
        "--labels-per-class", "5", "--distillation-type", "hard", "--teacher-path", str(teacher / "checkpoint.pth"),
        "--seed", str(seed),
    ]  # fmt: skip
    _train(*common, "--unlabelled", "--epochs", "1", "--output_dir", str(out / "semi"))
    _train(*common, "--epochs", "125", "--warmup-epochs", "10", "--output_dir", str(out / "few"))
    return {"semi": read_log(out / "semi")[-1]["test_acc1"], "few": read_log(out / "few")[-1]["test_acc1"]}


def official_deit3_state(model: torch.nn.Module) -> dict:
    """A DeiT III state dict as the official models_v2.py names it (LayerScale `gamma_1`, `gamma_2`)."""
    return {
        k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2"): v for k, v in model.state_dict().items()
    }


def deit3_distilled_then_finetuned(out: Path, teacher: Path, seed: int = 0) -> dict:
    """Hard distillation from the CNN into the distilled DeiT III (3 epochs); then the official layout of that
    student's plain twin fine-tuned into a distilled student (1 epoch). The student's log and the tuned run's first
    line."""
    import deit

    common = [*FAST, *LIGHT, "--lr", "0.032", "--distillation-type", "hard", "--seed", str(seed)]
    common += ["--teacher-path", str(teacher / "checkpoint.pth"), "--model", "deit3_pico_distilled_patch7_28"]
    _train(*common, "--epochs", "3", "--output_dir", str(out / "student"))
    plain = deit.create_model("deit3_pico_patch7_28", pretrained=out / "student" / "checkpoint.pth")
    torch.save({"model": official_deit3_state(plain)}, out / "official.pth")
    _train(*common, "--finetune", str(out / "official.pth"), "--epochs", "1", "--output_dir", str(out / "tuned"))
    return {"student": read_log(out / "student"), "tuned": read_log(out / "tuned")[0]}


def deit3_recipe(out: Path, seed: int = 0) -> list[dict]:
    """deit3_pico with Simple Random Crop, 3-Augment, BCE on Mixup targets and LAMB at an unscaled lr, 2 epochs."""
    recipe = ["--src", "--ThreeAugment", "--aa", "none", "--bce-loss", "--smoothing", "0", "--reprob", "0"]
    recipe += ["--mixup", "0.8", "--cutmix", "0", "--opt", "lamb", "--lr", "4e-3", "--unscale-lr"]
    _train("--model", "deit3_pico_patch7_28", *FAST, *recipe, "--epochs", "2", "--seed", str(seed),
           "--output_dir", str(out))  # fmt: skip
    return read_log(out)


def cnn_on_8px_digits(out: Path, seed: int = 0) -> dict[str, float]:
    """A small CNN trained on sklearn's 8 px digits, loaded as a teacher: its top-1 (fraction) on the 8 px test
    digits (native), on them upsampled to 28 px as a student takes them, through the teacher (resized back to 8 px)
    and fed to the network as they come (raw)."""
    import torch.nn.functional as F

    from deit.data import build_dataset
    from deit.teachers import load_teacher

    _train(
        "--model", "small_cnn", "--data-set", "digits", "--num_workers", "0", "--batch-size", "32", "--epochs", "4",
        "--lr", "0.05", "--warmup-epochs", "0.5", "--no-model-ema", "--seed", str(seed), "--output_dir", str(out),
    )  # fmt: skip
    teacher = load_teacher("ignored", out, num_classes=10, in_chans=1)
    assert teacher.input_size == 8
    test, info = build_dataset("digits", None, False)
    images = (torch.from_numpy(test.images).float().unsqueeze(1) / 255 - info.mean[0]) / info.std[0]
    targets = torch.tensor(test.targets)
    views = F.interpolate(images, size=(28, 28), mode="bicubic", align_corners=False)  # as the student takes them

    def accuracy(logits):
        return (logits.argmax(1) == targets).float().mean().item()

    assert torch.equal(teacher(images), teacher.model(images))  # at its own size: untouched
    return {
        "native": accuracy(teacher(images)),
        "resized": accuracy(teacher(views)),
        "raw": accuracy(teacher.model(views)),
    }
