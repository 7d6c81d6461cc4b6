"""The GPU's bf16 paths, run on the CPU: `--precision bf16` is CUDA's default, and CPU bf16 autocast gives the same
dtypes, so a step that mixes them up (as the teacher cache's lookup once did under a benchmark's autocast) fails
here without a GPU."""

import math

import pytest
import torch
from conftest import FAST, read_log

from deit.cli import main
from deit.distributed import amp_dtype
from deit.engine import evaluate

pytestmark = pytest.mark.smoke

# a distilled student with every part that runs under autocast: the teacher (or its cache), attention maps, EMA,
# batch augmentation on the training device
STUDENT = [
    "--model", "deit_pico_distilled_patch7_28", *FAST, "--labels-per-class", "16", "--epochs", "1",
    "--distillation-type", "hard", "--attn-distillation-weight", "1.0", "--model-ema", "--model-ema-decay", "0.9",
    "--batch-aug", "--precision", "bf16",
]  # fmt: skip


def test_bf16_is_cudas_default_and_the_cpus_on_request():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype("auto", cuda) == amp_dtype("bf16", cpu) == torch.bfloat16
    assert amp_dtype("auto", cpu) is None and amp_dtype("fp32", cuda) is None


def test_a_bf16_run_distils_online_and_from_a_cache_made_under_bf16(teacher, tmp_path):
    online, cached, cache = tmp_path / "online", tmp_path / "cached", tmp_path / "cache"
    assert main(["train", *STUDENT, "--teacher-path", str(teacher), "--output_dir", str(online)]) == 0
    assert main(["cache-teacher", *STUDENT, "--teacher-path", str(teacher), "--teacher-cache", str(cache)]) == 0
    assert main(["train", *STUDENT, "--teacher-cache", str(cache), "--output_dir", str(cached)]) == 0
    a, b = read_log(online)[0], read_log(cached)[0]
    for line in (a, b):
        assert all(math.isfinite(line[k]) for k in ("train_loss", "base_loss", "distill_loss", "attn_loss"))
        assert line["distill_loss"] > 0 and line["attn_loss"] > 0 and "ema_acc1" in line
    # the same hard labels; the maps stored as float16 from bf16 (8 significant bits) move the attention part a little
    assert b["distill_loss"] == pytest.approx(a["distill_loss"], rel=1e-2)
    assert b["attn_loss"] == pytest.approx(a["attn_loss"], rel=1e-2)
    state = torch.load(cached / "checkpoint.pth", weights_only=True)
    assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())  # fp32 weights
    # --eval of the run under bf16: the evaluation's own path
    assert main(["train", *STUDENT, "--teacher-cache", str(cache), "--eval", "--resume", str(cached)]) == 0


def test_bf16_evaluation_counts_what_its_logits_say(trained):
    """`evaluate` under bf16 autocast: its top-1 and loss move from fp32's only as far as the bf16 logits allow. An
    image's top-1 can change only where fp32's top-two margin is under twice the largest logit change, and a
    cross-entropy moves by at most twice that change (the log-sum-exp and the target's logit each by at most it)."""
    import deit
    from deit.data import build_dataset, eval_transform

    model = deit.create_model(pretrained=trained).eval()
    val, info = build_dataset("mnist5k", None, False)
    val.transform = eval_transform(28, mean=info.mean, std=info.std, crop_ratio=1.0)
    loader = torch.utils.data.DataLoader(val, batch_size=250)
    cpu = torch.device("cpu")
    fp32 = evaluate(model, loader, device=cpu)
    bf16 = evaluate(model, loader, device=cpu, amp_dtype=torch.bfloat16)
    with torch.inference_mode():  # the logits of the same batches
        exact = torch.cat([model(images) for images, *_ in loader])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded = torch.cat([model(images).float() for images, *_ in loader])
    change = (rounded - exact).abs().max().item()
    top2 = exact.topk(2, dim=1).values
    flippable = int((top2[:, 0] - top2[:, 1] <= 2 * change).sum())
    assert 0 < change < 0.1 * exact.abs().max().item()  # bf16 did run, and rounded rather than broke
    assert abs(bf16["acc1"] - fp32["acc1"]) * len(val) / 100 <= flippable + 1e-9
    assert abs(bf16["loss"] - fp32["loss"]) <= 2 * change + 1e-6
