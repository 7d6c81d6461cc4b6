import contextlib
import io
import os
import resource
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from short_runs import FAST, read_log, train_teacher

__all__ = ["FAST", "read_log"]  # the tests' shared flags and log reader, with the short runs they bound

# Property tests draw their examples from a fixed seed (a CI run is reproducible); HYPOTHESIS_PROFILE=explore draws
# new ones, ten times more of them.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def teacher(tmp_path_factory) -> Path:
    """A small CNN trained by `deit train` on 2,000 digits (`short_runs.teacher_argv`)."""
    out = tmp_path_factory.mktemp("teacher")
    train_teacher(out)
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A student trained briefly by `deit train` (well above chance): its checkpoint keeps the class names."""
    from deit.cli import main

    out = tmp_path_factory.mktemp("student")
    assert (
        main(
            [
                "train",
                "--model",
                "deit_pico_patch7_28",
                *FAST,
                "--epochs",
                "3",
                "--lr",
                "0.032",
                "--aa",
                "none",
                "--mixup",
                "0",
                "--reprob",
                "0",
                "--crop-scale",
                "0.75",
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    return out / "checkpoint.pth"


def same_topk(a: list[dict], b: list[dict], tol: float = 1e-6) -> bool:
    """The same probabilities to `tol` (plus one step of the 6-decimal rounding both sides apply), and the same
    labels but where two probabilities lie within that of each other (a batch of another size may order a tie
    differently)."""
    bound = tol + 1e-6 + 1e-12
    if any(abs(x["probability"] - y["probability"]) > bound for x, y in zip(a, b)):
        return False
    pa, pb = ({t["label"]: t["probability"] for t in side} for side in (a, b))
    for label in pa.keys() ^ pb.keys():  # in one top-k only: tied with the other's last
        p = pa.get(label, pb.get(label))
        if abs(p - min((pb if label in pa else pa).values())) > bound:
            return False
    return all(abs(pa[label] - pb[label]) <= bound for label in pa.keys() & pb.keys())


def interrupted_then_resumed(monkeypatch, config_for, folder: Path, stop_epoch: int) -> None:
    """Train with `config_for(output_dir, resume)`, stopped by Ctrl-C during epoch `stop_epoch`, then resumed from
    the folder's checkpoint."""
    import torch

    import deit.train as train_module

    real = train_module.train_one_epoch

    def interrupted(*args, epoch, **kwargs):
        if epoch == stop_epoch:
            raise KeyboardInterrupt
        return real(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_module.run(config_for(folder, None))
    assert torch.load(folder / "checkpoint.pth", weights_only=True)["epoch"] == stop_epoch - 1
    monkeypatch.setattr(train_module, "train_one_epoch", real)
    train_module.run(config_for(folder, folder))


def assert_same_run(a: Path, b: Path, parts=("model", "model_ema")) -> None:
    """Two run folders hold bit-equal weights and the same training losses."""
    import torch

    first = torch.load(a / "checkpoint.pth", weights_only=True)
    second = torch.load(b / "checkpoint.pth", weights_only=True)
    for part in parts:
        for key, value in first[part].items():
            assert torch.equal(value, second[part][key]), f"{part}.{key}"
    assert [line["train_loss"] for line in read_log(a)] == [line["train_loss"] for line in read_log(b)]


# -- property tests: a command in this process, and what it may answer ------------------------------------------
EXAMPLES = settings(
    max_examples=2500 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else 250,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-2, 100) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_cli(argv: list[str]) -> tuple[int, list[str]]:
    """`deit ...` in this process: (exit code, stderr lines)."""
    from deit.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's refusals
            code = e.code
    return code, err.getvalue().strip().splitlines()


def works_or_one_line(code: int, lines: list[str], command: str) -> None:
    assert code in (0, 2), (code, lines)
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith(f"deit {command}: error: "), lines
        assert "Traceback" not in lines[0]


def gray_model(num_classes: int = 3, crop_ratio: float = 1.0):
    """A small untrained grayscale DeiT carrying the data config training gives a model (class names a, b, c, ...)."""
    import deit

    model = deit.create_model("deit_pico_patch4_28", num_classes=num_classes, in_chans=1)
    model.data_config = {
        "class_names": [chr(ord("a") + i) for i in range(num_classes)],
        "mean": [0.5],
        "std": [0.25],
        "input_size": 28,
        "eval_crop_ratio": crop_ratio,
        "interpolation": "bicubic",
        "intensity": "minmax",
    }
    return model


def write_digit_folder(root: Path, corrupt: bool = False):
    """Eight digits a class as PNG files in train/ and val/ class folders; `corrupt`: and one broken file."""
    from deit.data import build_dataset

    train, _ = build_dataset("mnist5k", None, True, labels_per_class=8)
    for split in ("train", "val"):
        for i, (image, target, _) in enumerate(train[j] for j in range(len(train))):
            folder = root / split / f"class_{target}"
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{i}.png")
    if corrupt:
        (root / "train" / "class_3" / "broken.png").write_bytes(b"\x89PNG garbage")
