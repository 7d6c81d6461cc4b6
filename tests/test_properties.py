"""Property-based (hypothesis): any value of any type in any config field, from YAML or a flag, and any bytes or
metadata as weights: the command works, or it ends in one line with exit code 2. No traceback, no file written
outside the output folder, memory bounded.

Examples are drawn from a fixed seed (reproducible CI); `HYPOTHESIS_PROFILE=explore` draws new ones, ten times more.
"""

import json
import os
import tempfile
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from conftest import EXAMPLES, JSON, gray_model, peak_rss_mb, run_cli, works_or_one_line
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

import deit
import deit.train
from deit.cli import flag_name
from deit.config import SECTIONS, TrainConfig
from deit.data import dataset_defaults
from deit.models import save_weights
from deit.models.weights import deit_config

FIELDS = [(section, f.name, f.type) for section, cls in SECTIONS.items() for f in fields(cls)]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-3, 300),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(
        [
            "none",
            "null",
            "auto",
            "cpu",
            "cuda:0",
            "1e-3",
            "-1",
            "0",
            "0.5",
            "nan",
            "inf",
            "-inf",
            "hard",
            "soft",
            "kl",
            "rand-m9-mstd0.5-inc1",
            "augmix-m5-w4-d2",
            "folder",
            "mnist5k",
            "digits",
            "adamw",
            "sgd",
            "bicubic",
            "float16",
            "-2,-1",
            "small_cnn",
            "deit_pico_patch4_28",
            "\x1b[31m",
            "a\nb",
        ]
    ),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=4), SCALARS, max_size=2))


@pytest.fixture
def validated(monkeypatch):
    """`deit train` stops where the work would begin: what reaches it is a valid config (its data set's defaults
    applied, as a run does)."""
    seen = []

    def stop(cfg: TrainConfig) -> dict:
        assert isinstance(cfg, TrainConfig)
        seen.append(cfg.with_defaults(dataset_defaults(cfg.data.data_set)))
        return {}

    monkeypatch.setattr(deit.train, "run", stop)
    monkeypatch.setattr(deit.train, "evaluate_only", stop)  # --eval
    return seen


@pytest.fixture
def scratch(monkeypatch):
    """An empty working folder; the test checks that it stays empty (nothing written outside an output folder)."""
    with tempfile.TemporaryDirectory() as folder:
        monkeypatch.chdir(folder)
        yield Path(folder)


@EXAMPLES
@given(field=st.sampled_from(FIELDS), value=VALUES)
def test_any_value_in_any_yaml_field_works_or_is_one_line(validated, scratch, field, value):
    section, name, annotation = field
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, dir=scratch.parent) as f:
        yaml.safe_dump({section: {name: value}}, f)
    try:
        code, lines = run_cli(["train", "--config", f.name])
    finally:
        os.unlink(f.name)
    works_or_one_line(code, lines, "train")
    if code == 0:  # it reached the run with the field as its annotated type
        given = getattr(getattr(validated[-1], section), name)
        kinds = {"int": int, "float": float, "str": str, "bool": bool}
        assert given is None or type(given) is kinds[annotation.split("|")[0].strip()], (name, given)
    assert not any(scratch.iterdir())


@EXAMPLES
@given(field=st.sampled_from(FIELDS), value=VALUES, spelling=st.sampled_from(["value", "bare", "no"]))
def test_any_value_of_any_flag_works_or_is_one_line(validated, scratch, field, value, spelling):
    _, name, annotation = field
    flag = flag_name(name)
    if annotation == "bool":
        argv = {"value": [flag, str(value)], "bare": [flag], "no": ["--no-" + flag[2:]]}[spelling]
    else:
        argv = [flag, str(value)]
    code, lines = run_cli(["train", *argv])
    works_or_one_line(code, lines, "train")
    assert not any(scratch.iterdir())


# --- weights ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A small trained-looking model saved three ways, an image to predict, and the model's deit config."""
    root = tmp_path_factory.mktemp("weights")
    model = gray_model()
    save_weights(model, root / "model.safetensors")
    torch.save({"model": model.state_dict(), "deit_config": deit_config(model)}, root / "model.pth")
    Image.new("L", (28, 28), 128).save(root / "image.png")
    return {
        "root": root,
        "model": model,
        "config": deit_config(model),
        "files": {name: (root / name).read_bytes() for name in ("model.safetensors", "model.pth")},
    }


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` truncated, or with a few bytes overwritten."""
    cut = st.integers(0, len(data)).map(lambda n: data[:n])
    edit = st.tuples(st.integers(0, len(data) - 1), st.binary(min_size=1, max_size=8)).map(
        lambda pos_bytes: data[: pos_bytes[0]] + pos_bytes[1] + data[pos_bytes[0] + len(pos_bytes[1]) :]
    )
    return st.one_of(cut, edit)


def refused_or_loaded(path: Path, weights) -> None:
    """create_model, load_weights and `deit predict` on `path`: each works or is refused in one line."""
    for attempt in (lambda: deit.create_model(pretrained=path), lambda: deit.load_weights(weights["model"], path)):
        try:
            attempt()
        except ValueError as e:  # WeightsError is one
            assert "\n" not in str(e)
    code, lines = run_cli(["predict", "--weights", str(path), str(weights["root"] / "image.png"), "--json"])
    works_or_one_line(code, lines, "predict")


@EXAMPLES
@given(data=st.data())
def test_any_bytes_as_weights_are_loaded_or_refused_in_one_line(weights, scratch, data):
    name = data.draw(st.sampled_from(["model.safetensors", "model.pth", "random"]))
    content = data.draw(st.binary(max_size=4096) if name == "random" else mutated(weights["files"][name]))
    path = scratch.parent / f"{os.getpid()}-{name}"
    path.write_bytes(content)
    rss = peak_rss_mb()
    try:
        refused_or_loaded(path, weights)
        assert path.read_bytes() == content  # read, never written
    finally:
        path.unlink()
    assert peak_rss_mb() - rss < 300
    assert not any(scratch.iterdir())


KEYS = [
    (),
    ("format",),
    ("version",),
    ("family",),
    ("model",),
    ("distilled",),
    ("hparams",),
    ("data",),
    *[
        ("hparams", k)
        for k in (
            "img_size",
            "patch_size",
            "in_chans",
            "num_classes",
            "embed_dim",
            "depth",
            "num_heads",
            "mlp_ratio",
            "qkv_bias",
            "drop_path_rate",
            "extra",
        )
    ],
    *[
        ("data", k)
        for k in ("class_names", "mean", "std", "input_size", "eval_crop_ratio", "interpolation", "intensity", "extra")
    ],
]


def edited_config(config: dict, key: tuple, action: str, value) -> object:
    config = json.loads(json.dumps(config))
    if not key:
        return value  # the whole config replaced
    target = config
    for part in key[:-1]:
        target = target[part]
    if action == "delete":
        target.pop(key[-1], None)
    else:
        target[key[-1]] = value
    return config


@EXAMPLES
@given(
    key=st.sampled_from(KEYS),
    action=st.sampled_from(["set", "delete"]),
    value=JSON,
    where=st.sampled_from(["safetensors metadata", "folder config.json"]),
)
def test_any_metadata_is_validated_before_a_model_is_built(weights, scratch, key, action, value, where):
    config = edited_config(weights["config"], key, action, value)
    tensors = {k: v.contiguous() for k, v in weights["model"].state_dict().items()}
    folder = Path(tempfile.mkdtemp(dir=scratch.parent))
    try:
        if where == "safetensors metadata":
            path = folder / "model.safetensors"
            save_file(tensors, str(path), metadata={"format": "pt", "deit_config": json.dumps(config)})
        else:
            path = folder
            save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
            (folder / "config.json").write_text(
                json.dumps({"format": "deit", **config} if isinstance(config, dict) else config)
            )
        before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
        rss = peak_rss_mb()
        refused_or_loaded(path, weights)
        assert peak_rss_mb() - rss < 300  # a config claiming a huge model is refused before it is built
        assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    assert not any(scratch.iterdir())
