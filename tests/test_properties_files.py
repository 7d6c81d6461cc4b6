"""Property-based (hypothesis): any value in any field of the files other tools (or `deit shard`) write and deit reads,
a shard index, an HF folder's config.json and preprocessor_config.json, a timm folder's config.json. Each case
works, with the meaning the writing tool gives the file, or ends in one line with exit code 2; memory bounded.

Meaning: a shard index that is accepted evaluates exactly the samples its tars hold; an HF or timm folder that is
accepted prepares an image as transformers' processor, or timm's transform for its pretrained_cfg, does.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, JSON, gray_model, peak_rss_mb, run_cli, works_or_one_line
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

import deit
from deit.cli import main
from deit.data.preprocess import preprocessing
from deit.models import save_weights
from deit.models.metadata import WeightsError

SIZES = st.one_of(
    st.integers(1, 64),
    st.fixed_dictionaries({"shortest_edge": st.integers(0, 64)}),
    st.integers(1, 64).map(lambda s: {"height": s, "width": s}),
    st.fixed_dictionaries({"height": st.integers(1, 64), "width": st.integers(1, 64)}),
)
VALUES = st.one_of(JSON, SIZES, st.floats(0, 2), st.sampled_from([0, 1, 2, 3, 4, 5, "bicubic", "squash", "center"]))


def edited(document: dict, path: tuple, value, delete: bool) -> dict:
    """`document` with the field at `path` set to `value` (or removed); a missing parent is created."""
    document = json.loads(json.dumps(document))
    target = document
    for part in path[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    if delete:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return document


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 3-class grayscale model saved with its data config, and a wide image with a smooth gradient (a square
    resize, a short-side resize and a crop elsewhere give clearly different pixels; a one-pixel shift, little)."""
    root = tmp_path_factory.mktemp("source")
    model = gray_model(crop_ratio=0.875)
    save_weights(model, root / "model.safetensors")
    x, y = np.meshgrid(np.linspace(0, 255, 44), np.linspace(0, 90, 30))
    Image.fromarray((x * 0.8 + y).clip(0, 255).astype(np.uint8), "L").save(root / "wide.png")
    folders = {}
    for kind in ("hf", "timm"):
        folders[kind] = root / kind
        assert main(["convert", str(root / "model.safetensors"), str(folders[kind]), "--to", kind]) == 0
    return {"root": root, "image": root / "wide.png", **folders}


def loaded_or_refused(folder: Path):
    """The model the folder holds, or None when it is refused in one line; memory bounded either way."""
    rss = peak_rss_mb()
    try:
        model = deit.create_model(pretrained=folder)
    except WeightsError as e:
        assert "\n" not in str(e) and str(folder) in str(e), str(e)
        model = None
    assert peak_rss_mb() - rss < 300
    code, lines = run_cli(["predict", "--weights", str(folder), str(folder.parent / "wide.png"), "--json"])
    works_or_one_line(code, lines, "predict")
    assert (code == 0) == (model is not None), lines
    event("loaded" if model is not None else "refused")
    return model


def same_pixels(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """The same preparation: equal shapes, and pixels within a resampler's rounding and a one-pixel offset of the
    crop (torchvision rounds an odd margin's half, transformers floors it) on the test image's gradient."""
    ours, theirs = ours[:1], theirs[:1]  # a gray image: every channel the same
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    spread = float(theirs.max() - theirs.min()) + 1e-6
    assert float((ours - theirs).abs().mean()) <= 0.04 * spread + 1e-4, float((ours - theirs).abs().mean() / spread)


def prepares_as(model, image: Path, theirs) -> None:
    """Our preparation of `image` for `model` is `theirs(the image in RGB)`, the other tool's, when that tool can
    prepare it at all (one that refuses the file leaves ours free to read it or refuse it)."""
    try:
        prepared = theirs(Image.open(image).convert("RGB"))
    except Exception:  # whatever the other tool raises for a file it cannot use
        event("refused by the other tool")
        return
    same_pixels(preprocessing(model).read(image), prepared)
    event("read by both: the same pixels")


def in_scratch(original: Path, files: dict) -> Path:
    folder = Path(tempfile.mkdtemp(dir=original.parent))
    for f in original.iterdir():
        os.symlink(f, folder / f.name) if f.name not in files else None
    for name, document in files.items():
        (folder / name).write_text(json.dumps(document))
    return folder


HF_CONFIG_KEYS = [
    ("model_type",),
    ("architectures",),
    ("hidden_act",),
    ("hidden_size",),
    ("num_hidden_layers",),
    ("num_attention_heads",),
    ("intermediate_size",),
    ("image_size",),
    ("patch_size",),
    ("num_channels",),
    ("qkv_bias",),
    ("id2label",),
    ("label2id",),
    ("extra",),
]
HF_PROCESSOR_KEYS = [
    ("image_processor_type",),
    ("do_resize",),
    ("size",),
    ("resample",),
    ("do_center_crop",),
    ("crop_size",),
    ("do_rescale",),
    ("rescale_factor",),
    ("do_normalize",),
    ("image_mean",),
    ("image_std",),
    ("extra",),
]


@EXAMPLES
@given(
    data=st.data(),
    file=st.sampled_from(["config.json", "preprocessor_config.json"]),
    delete=st.booleans(),
    value=VALUES,
)
def test_any_hf_folder_field_means_what_transformers_reads_or_is_one_line(source, data, file, delete, value):
    import transformers

    key = data.draw(st.sampled_from(HF_CONFIG_KEYS if file == "config.json" else HF_PROCESSOR_KEYS))
    original = json.loads((source["hf"] / file).read_text())
    folder = in_scratch(source["hf"], {file: edited(original, key, value, delete)})
    try:
        model = loaded_or_refused(folder)
        if model is not None and file == "preprocessor_config.json":

            def theirs(image):  # transformers' processor, on the image as its pipeline opens it
                processor = transformers.AutoImageProcessor.from_pretrained(str(folder))
                return processor(images=image, return_tensors="pt")["pixel_values"][0].float()

            prepares_as(model, source["image"], theirs)
    finally:
        shutil.rmtree(folder)


TIMM_KEYS = [
    ("architecture",),
    ("num_classes",),
    ("label_names",),
    *[
        ("model_args", k)
        for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias")
    ],
    *[("model_args", k) for k in ("global_pool", "class_token", "reg_tokens", "init_values", "act_layer", "extra")],
    *[
        ("pretrained_cfg", k)
        for k in ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation", "num_classes", "extra")
    ],
]


@EXAMPLES
@given(key=st.sampled_from(TIMM_KEYS), delete=st.booleans(), value=VALUES)
def test_any_timm_folder_field_means_what_timm_reads_or_is_one_line(source, key, delete, value):
    import timm
    from timm.data import create_transform, resolve_data_config

    original = json.loads((source["timm"] / "config.json").read_text())
    config = edited(original, key, value, delete)
    folder = in_scratch(source["timm"], {"config.json": config})
    try:
        model = loaded_or_refused(folder)
        if model is not None:

            def theirs(image):  # timm's transform for the model timm builds from the folder
                return create_transform(**resolve_data_config(model=timm.create_model(f"local-dir:{folder}")))(image)

            prepares_as(model, source["image"], theirs)
    finally:
        shutil.rmtree(folder)


# -- a shard index ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two classes of 8x8 images (12 train, 6 val each) written by `deit shard` into 2 shards a split, and a model
    of two classes for them."""
    root = tmp_path_factory.mktemp("shards")
    for split, n in (("train", 12), ("val", 6)):
        for c in ("x", "y"):
            (root / "images" / split / c).mkdir(parents=True)
            for i in range(n):
                value = (i * 17 + (99 if c == "y" else 0)) % 256
                Image.fromarray(np.full((8, 8), value, np.uint8), "L").save(root / "images" / split / c / f"{i}.png")
    assert main(["shard", str(root / "images"), str(root / "base"), "--shard-size", "6KB"]) == 0
    model = deit.create_model("deit_pico_patch4_28", num_classes=2, in_chans=1)
    model.data_config = {"class_names": ["x", "y"], "mean": [0.5], "std": [0.25], "input_size": 28}
    save_weights(model, root / "model.safetensors")
    return root


def index_keys(index: dict) -> list[tuple]:
    keys = [(k,) for k in ("format", "version", "class_names", "splits", "extra")]
    for split, entry in index["splits"].items():
        keys += [("splits", split, k) for k in (*entry, "extra")]
        keys += [("splits", split, "shards", 0, k) for k in ("name", "samples", "seeks", "bytes")]
    return keys


@EXAMPLES
@given(data=st.data(), delete=st.booleans(), value=VALUES)
def test_any_index_field_evaluates_the_samples_its_tars_hold_or_is_one_line(shards, data, delete, value):
    base = shards / "base"
    index = json.loads((base / "index.json").read_text())
    key = data.draw(st.sampled_from(index_keys(index)))
    document = json.loads(json.dumps(index))
    target = document
    for part in key[:-1]:
        target = target[part]
    if delete and isinstance(target, dict):
        target.pop(key[-1], None)
    else:
        target[key[-1]] = value
    folder = in_scratch(base, {"index.json": document})
    try:
        rss = peak_rss_mb()
        argv = ["eval", "--weights", str(shards / "model.safetensors"), "--data-set", "wds", "--data-path"]
        code, lines = run_cli([*argv, str(folder), "--num_workers", "0", "--output_dir", str(folder / "eval")])
        works_or_one_line(code, lines, "eval")
        assert peak_rss_mb() - rss < 300
        event(f"exit {code}")
        if code == 0:  # every val sample the tars hold, once
            assert json.loads((folder / "eval" / "eval.json").read_text())["images"] == 12, lines
    finally:
        shutil.rmtree(folder)
