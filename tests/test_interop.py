"""Weights other tools load as they are: `deit convert --to hf` through transformers' pipeline and Auto classes,
`--to timm` through `timm.create_model("local-dir:...")` and `resolve_data_config`, the reverse loads of both
folders with their class names and preprocessing, the ONNX metadata; each compared with `deit predict`."""

import json

import pytest
import timm
import torch
from conftest import same_topk
from PIL import Image

import deit
from deit.cli import main
from deit.predict import predict

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory):
    from deit.data import build_dataset

    val, _ = build_dataset("mnist5k", None, False)
    folder = tmp_path_factory.mktemp("digit_files")
    for i in range(0, 1000, 25):  # 40 test digits
        Image.fromarray(val.images[i], "L").save(folder / f"{i}.png")
    return sorted(folder.glob("*.png"))


@pytest.fixture(scope="module")
def rgb_distilled(tmp_path_factory):
    """A distilled RGB model with class names of its own, saved as ours."""
    torch.manual_seed(0)
    model = deit.create_model("deit_pico_distilled_patch4_28", num_classes=4)
    with torch.no_grad():  # peaked outputs: top-k orders that a float's rounding does not swap
        model.head.weight.mul_(40)
        model.head_dist.weight.mul_(40)
    model.data_config = {"class_names": ["cat", "dog", "owl", "eel"], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    out = tmp_path_factory.mktemp("rgb") / "model"
    deit.save_weights(model, out)
    return out


def ours(weights, files) -> list[list[dict]]:
    predictions, errors = predict(deit.create_model(pretrained=weights), files)
    assert not errors
    return [p.to_dict()["topk"] for p in predictions]


def theirs(labels, probabilities) -> list[dict]:
    return [{"label": a, "probability": round(float(b), 6)} for a, b in zip(labels, probabilities)]


def test_hf_folder_loads_in_pipeline_and_auto_classes_with_deit_predicts_topk(trained, digit_files, tmp_path):
    """The demo-style grayscale student: pipeline reads images as RGB, the exported filters see them in gray."""
    assert main(["convert", str(trained), str(tmp_path / "hf"), "--to", "hf"]) == 0
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        assert (tmp_path / "hf" / name).is_file()
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["id2label"]["3"] == "3" and config["label2id"]["7"] == 7
    expected = ours(trained, digit_files)
    pipe = transformers.pipeline("image-classification", model=str(tmp_path / "hf"), top_k=5)
    for file, want in zip(digit_files, expected):
        got = pipe(str(file))
        assert same_topk(theirs([g["label"] for g in got], [g["score"] for g in got]), want, tol=1e-4)
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf")
    model = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "hf").eval()
    images = [Image.open(f) for f in digit_files]
    with torch.no_grad():
        probs = model(**processor(images, return_tensors="pt")).logits.softmax(-1)
    values, indices = probs.topk(5)
    for v, i, want in zip(values, indices, expected):
        assert same_topk(theirs([model.config.id2label[j] for j in i.tolist()], v.tolist()), want, tol=1e-4)


def test_hf_folder_of_a_distilled_rgb_model_gives_both_heads_mean(rgb_distilled, tmp_path):
    assert main(["convert", str(rgb_distilled), str(tmp_path / "hf"), "--to", "hf"]) == 0
    files = []
    for i in range(6):
        torch.manual_seed(i)
        Image.fromarray((torch.rand(28, 28, 3) * 255).byte().numpy(), "RGB").save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    expected = ours(rgb_distilled, files)
    pipe = transformers.pipeline("image-classification", model=str(tmp_path / "hf"), top_k=4)
    assert type(pipe.model).__name__ == "DeiTForImageClassificationWithTeacher"
    for file, want in zip(files, expected):
        got = pipe(str(file))
        assert same_topk(theirs([g["label"] for g in got], [g["score"] for g in got]), want[:4], tol=1e-4)


def test_timm_folder_loads_in_timm_with_the_same_logits_and_preprocessing(trained, digit_files, tmp_path):
    assert main(["convert", str(trained), str(tmp_path / "timm"), "--to", "timm"]) == 0
    reference = deit.create_model(pretrained=trained).eval()
    model = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-5
    data = timm.data.resolve_data_config({}, model=model)
    prep = deit.data.preprocess.preprocessing(reference)
    assert (
        tuple(data["input_size"]) == (1, 28, 28) and tuple(data["mean"]) == prep.mean and tuple(data["std"]) == prep.std
    )
    assert data["crop_pct"] == prep.crop_ratio and data["interpolation"] == prep.interpolation
    assert model.pretrained_cfg["label_names"] == prep.class_names
    transform = timm.data.create_transform(**data)
    for file, want in zip(digit_files, ours(trained, digit_files)):
        with torch.no_grad():
            values, indices = model(transform(Image.open(file).convert("L"))[None]).softmax(-1)[0].topk(5)
        assert same_topk(theirs([prep.class_names[i] for i in indices.tolist()], values.tolist()), want, tol=1e-4)


def test_a_distilled_model_goes_to_timm_too(rgb_distilled, tmp_path):
    assert main(["convert", str(rgb_distilled), str(tmp_path / "timm"), "--to", "timm"]) == 0
    model = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    reference = deit.create_model(pretrained=rgb_distilled).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-5
    assert model.pretrained_cfg["label_names"] == ["cat", "dog", "owl", "eel"]


@pytest.mark.parametrize("layout", ["hf", "timm"])
def test_their_folders_load_back_with_class_names_and_preprocessing(
    trained, rgb_distilled, digit_files, tmp_path, layout
):
    """What deit predict, eval and serve read from another tool's folder: its class names and preprocessing."""
    for source in (trained, rgb_distilled):
        folder = tmp_path / f"{source.name}_{layout}"
        assert main(["convert", str(source), str(folder), "--to", layout]) == 0
        loaded = deit.create_model(pretrained=folder)
        original = deit.create_model(pretrained=source)
        got, want = deit.data.preprocess.preprocessing(loaded), deit.data.preprocess.preprocessing(original)
        assert got.class_names == want.class_names and got.crop_ratio == want.crop_ratio
        assert got.interpolation == want.interpolation and got.std[0] == pytest.approx(want.std[0])
    for got, want in zip(ours(tmp_path / f"{trained.name}_{layout}", digit_files), ours(trained, digit_files)):
        assert same_topk(got, want, tol=1e-4)


@pytest.fixture(scope="module")
def wide_digits(tmp_path_factory):
    """Digits on wider-than-tall canvases at varied places: a square resize and a short-side resize differ."""
    import numpy as np

    from deit.data import build_dataset

    val, _ = build_dataset("mnist5k", None, False)
    folder = tmp_path_factory.mktemp("wide_digits")
    for k, i in enumerate(range(0, 1000, 50)):
        canvas = np.zeros((28, 28 + 4 * (k % 5 + 1)), np.uint8)
        start = (k * 7) % (canvas.shape[1] - 27)
        canvas[:, start : start + 28] = val.images[i]
        Image.fromarray(canvas, "L").save(folder / f"{i}.png")
    return sorted(folder.glob("*.png"))


# preprocessor_config.json as other tools write it: transformers gives each field a meaning (an int size is a
# square for ViT's and DeiT's processors, the short side for BiT's; a field left out takes the class's default)
THEIR_PROCESSORS = {
    "size an int (BiT: the short side)": lambda p: p.update(size=32),
    "size a square": lambda p: p.update(size={"height": 32, "width": 32}),
    "centre crop left to its default": lambda p: p.pop("do_center_crop"),
    "ViT's, size an int": lambda p: p.update(image_processor_type="ViTImageProcessor", size=28, do_center_crop=None),
    "DeiT's, size and crop ints": lambda p: p.update(image_processor_type="DeiTImageProcessor", size=32, crop_size=28),
    "pixels rescaled to 0-2": lambda p: p.update(
        rescale_factor=2 / 255, image_mean=[m * 2 for m in p["image_mean"]], image_std=[s * 2 for s in p["image_std"]]
    ),
}


@pytest.mark.parametrize("case", list(THEIR_PROCESSORS))
def test_a_processor_written_by_another_tool_means_what_transformers_reads(trained, wide_digits, tmp_path, case):
    folder = tmp_path / "hf"
    assert main(["convert", str(trained), str(folder), "--to", "hf"]) == 0
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    THEIR_PROCESSORS[case](processor)
    (folder / "preprocessor_config.json").write_text(json.dumps({k: v for k, v in processor.items() if v is not None}))
    pipe = transformers.pipeline("image-classification", model=str(folder), top_k=3)
    for file, want in zip(wide_digits, ours(folder, wide_digits)):
        got = pipe(str(file))
        assert same_topk(theirs([g["label"] for g in got], [g["score"] for g in got]), want[:3], tol=2e-2), file


HOSTILE_TIMM = {
    "label_names of another count": lambda c: c.update(label_names=["a", "b"]),
    "label_names not strings": lambda c: c.update(label_names=[1, 2]),
    "mean of another channel count": lambda c: c["pretrained_cfg"].update(mean=[0.5, 0.5, 0.5, 0.5]),
    "crop_pct over 1": lambda c: c["pretrained_cfg"].update(crop_pct=7),
    "unknown interpolation": lambda c: c["pretrained_cfg"].update(interpolation="magic"),
    "num_heads not a number": lambda c: c["model_args"].update(num_heads="many"),
    "an architecture of another family": lambda c: c.update(architecture="swin_tiny_patch4_window7_224"),
    "a depth the tensors do not have": lambda c: c["model_args"].update(depth=2),
    "average pooling": lambda c: c["model_args"].update(global_pool="avg"),
    "an argument deit cannot honour": lambda c: c["model_args"].update(reg_tokens=4),
    "a non-square input": lambda c: c["pretrained_cfg"].update(input_size=[1, 28, 40]),
}


@pytest.mark.parametrize("case", list(HOSTILE_TIMM))
def test_a_hostile_timm_folder_is_refused_in_one_line(trained, tmp_path, capsys, case):
    folder = tmp_path / "timm"
    assert main(["convert", str(trained), str(folder), "--to", "timm"]) == 0
    config = json.loads((folder / "config.json").read_text())
    HOSTILE_TIMM[case](config)
    (folder / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["predict", str(trained), "--weights", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(folder) in err and "Traceback" not in err


HOSTILE_HF = {
    "crop larger than the resize": lambda p: p.update(crop_size={"height": 64, "width": 64}),
    "resample not PIL's": lambda p: p.update(resample=99),
    "size of zero": lambda p: p.update(size={"shortest_edge": 0}),
    "std of zero": lambda p: p.update(image_std=[0.0, 0.0, 0.0]),
    "a processor deit does not repeat": lambda p: p.update(image_processor_type="ConvNextImageProcessor"),
    "a size that is not square": lambda p: p.update(size={"height": 28, "width": 40}),
    "no resize": lambda p: p.update(do_resize=False),
    # transformers would feed the 28 px model 14 px images, which it cannot take
    "a crop other than the model's size": lambda p: p.update(size=16, crop_size=14),
}

HOSTILE_HF_CONFIG = {
    "another model type": lambda c: c.update(model_type="swin"),
    "another architecture": lambda c: c.update(architectures=["SwinForImageClassification"]),
    "another activation": lambda c: c.update(hidden_act="relu"),
    "a depth the tensors do not have": lambda c: c.update(num_hidden_layers=2),
    "a width the tensors do not have": lambda c: c.update(hidden_size=8),
}


@pytest.mark.parametrize("case", list(HOSTILE_HF_CONFIG))
def test_an_hf_config_that_contradicts_its_weights_is_refused_in_one_line(trained, tmp_path, capsys, case):
    folder = tmp_path / "hf"
    assert main(["convert", str(trained), str(folder), "--to", "hf"]) == 0
    config = json.loads((folder / "config.json").read_text())
    HOSTILE_HF_CONFIG[case](config)
    (folder / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["predict", str(trained), "--weights", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.json" in err and "Traceback" not in err


@pytest.mark.parametrize("case", list(HOSTILE_HF))
def test_a_hostile_hf_processor_is_refused_in_one_line(trained, tmp_path, capsys, case):
    folder = tmp_path / "hf"
    assert main(["convert", str(trained), str(folder), "--to", "hf"]) == 0
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    HOSTILE_HF[case](processor)
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    capsys.readouterr()
    assert main(["predict", str(trained), "--weights", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_onnx_metadata_carries_class_names_and_preprocessing(rgb_distilled, tmp_path):
    onnx = pytest.importorskip("onnx")
    assert main(["export", "--weights", str(rgb_distilled), "-o", str(tmp_path / "m.onnx")]) == 0
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    config = json.loads(props["deit_config"])
    assert config["data"]["class_names"] == ["cat", "dog", "owl", "eel"]
    assert config["data"]["mean"] == [0.5, 0.4, 0.3] and config["hparams"]["img_size"] == 28
    assert int(props["parameters"]) == sum(p.numel() for p in deit.create_model(pretrained=rgb_distilled).parameters())


def test_a_config_json_over_its_bound_is_refused_before_it_is_read(trained, tmp_path, capsys):
    from deit.models.weights import MAX_CONFIG_BYTES

    folder = tmp_path / "hf"
    assert main(["convert", str(trained), str(folder), "--to", "hf"]) == 0
    with open(folder / "config.json", "r+b") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)  # sparse: no disk, and never read
    capsys.readouterr()
    assert main(["predict", str(trained), "--weights", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"over the {MAX_CONFIG_BYTES:,}" in err, err
