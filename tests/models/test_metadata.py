"""Metadata read from weights files is checked before a model is built from it (hostile or damaged files)."""

import json
import resource
import time

import pytest
import torch
from safetensors.torch import save_file

import deit
from deit.cli import main
from deit.models import WeightsError, read_checkpoint, save_weights
from deit.models.metadata import parameter_count
from deit.models.weights import deit_config

NAME = "deit_pico_patch4_28"


@pytest.fixture(scope="module")
def model():
    model = deit.create_model(NAME, num_classes=10, in_chans=1)
    model.data_config = {
        "class_names": [str(i) for i in range(10)],
        "mean": [0.13],
        "std": [0.31],
        "input_size": 28,
        "eval_crop_ratio": 1.0,
        "interpolation": "bicubic",
        "intensity": "minmax",
    }
    return model


def with_config(model, path, edit) -> None:
    """A safetensors file of `model` whose deit config is `edit(config)`."""
    config = json.loads(json.dumps(deit_config(model)))
    edit(config)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "pt", "deit_config": json.dumps(config)})


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


HOSTILE = {
    "huge model": (lambda c: c["hparams"].update(depth=10**6, embed_dim=8192), "depth=1000000 must be between"),
    "huge but in bounds": (lambda c: c["hparams"].update(depth=1000, embed_dim=8192), "its config says embed_dim=8192"),
    "zero patch": (lambda c: c["hparams"].update(patch_size=0), "patch_size=0 must be between"),
    "negative size": (lambda c: c["hparams"].update(img_size=-28), "img_size=-28 must be between"),
    "extra hparam": (lambda c: c["hparams"].update(evil=1), "unknown hparams 'evil'"),
    "missing hparam": (lambda c: c["hparams"].pop("embed_dim"), "hparams lack embed_dim"),
    "float depth": (lambda c: c["hparams"].update(depth=3.5), "depth=3.5 must be a whole number"),
    "text width": (lambda c: c["hparams"].update(embed_dim="64"), "embed_dim='64' must be a number"),
    "heads do not divide": (lambda c: c["hparams"].update(num_heads=3), "not divisible by num_heads=3"),
    "two names for ten classes": (lambda c: c["data"].update(class_names=["a", "b"]), "2 class names for 10 classes"),
    "interpolation": (lambda c: c["data"].update(interpolation="evil"), "interpolation='evil' must be one of"),
    "zero std": (lambda c: c["data"].update(std=[0.0]), "std=0.0 must be between"),
    "mean per channel": (lambda c: c["data"].update(mean=[0.1, 0.2, 0.3]), "one value per input channel"),
    "names not strings": (lambda c: c["data"].update(class_names=list(range(10))), "class_names must be a list"),
    "not distilled": (lambda c: c.update(distilled=True), "says distilled=True"),
    "unknown family": (lambda c: c.update(family="rnn"), "family='rnn' must be deit or cnn"),
    "config a list": (lambda c: (c.clear(), None), "its deit config has no hparams"),
    "nan ratio": (lambda c: c["hparams"].update(mlp_ratio=float("nan")), "mlp_ratio=nan must be a finite number"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_metadata_is_refused_in_one_line_before_a_model_is_built(model, tmp_path, case):
    edit, message = HOSTILE[case]
    path = tmp_path / "w.safetensors"
    with_config(model, path, edit)
    rss, start = peak_rss_mb(), time.perf_counter()
    with pytest.raises(WeightsError) as info:
        deit.create_model(pretrained=path)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert time.perf_counter() - start < 5 and peak_rss_mb() - rss < 200  # refused before anything is allocated


def test_the_same_checks_for_a_folders_config_json(model, tmp_path, capsys):
    save_weights(model, tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    # a folder's config.json is read when its safetensors file carries none
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp_path / "saved" / "model.safetensors"), metadata={"format": "pt"})
    assert deit.create_model(pretrained=tmp_path / "saved").model_name == NAME
    for edit, message in [
        (lambda c: c["hparams"].update(depth=10**6, embed_dim=8192), "must be between"),
        (lambda c: c["data"].update(class_names=["a", "b"]), "2 class names for 10 classes"),
    ]:
        bad = json.loads(json.dumps(config))
        edit(bad)
        (tmp_path / "saved" / "config.json").write_text(json.dumps(bad))
        with pytest.raises(WeightsError, match=message):
            deit.create_model(pretrained=tmp_path / "saved")
    (tmp_path / "saved" / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="config.json is not valid JSON"):
        read_checkpoint(tmp_path / "saved")
    # and on the command line: one line, exit code 2
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["predict", "--weights", str(tmp_path / "saved"), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json is not valid JSON" in err[0]


def test_an_hf_config_with_a_bad_head_count_is_refused(model, tmp_path):
    from deit.models import export_weights

    export_weights(deit.create_model("deit_pico_patch4_28"), tmp_path / "hf", "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    for heads, message in (
        (0, "num_attention_heads=0 must be between"),
        (3, "not divisible by num_heads=3"),
        ("4", "must be a number"),
    ):
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "num_attention_heads": heads}))
        with pytest.raises(WeightsError, match=message):
            deit.create_model(pretrained=tmp_path / "hf")


def test_a_model_too_large_for_memory_is_refused_with_its_parameter_count():
    with pytest.raises(WeightsError, match=r"would have [\d,.]+M parameters .* more than the .* GB of memory"):
        deit.create_model("deit_base_patch16_224", depth=1000, embed_dim=16384, num_heads=16)


@pytest.mark.parametrize("name", ["deit_pico_patch4_28", "deit_tiny_distilled_patch16_224", "deit_base_patch16_384"])
def test_the_parameter_count_is_the_models(name):
    with torch.device("meta"):
        for kwargs in ({}, {"num_classes": 7, "in_chans": 1, "qkv_bias": False, "mlp_ratio": 3.0}):
            model = deit.create_model(name, **kwargs)
            built = sum(p.numel() for p in model.parameters())
            assert parameter_count(model.hparams, model.num_prefix_tokens == 2) == built


def test_nan_weights_are_refused(model, tmp_path, capsys):
    broken = deit.create_model(NAME, num_classes=10, in_chans=1)
    with torch.no_grad():
        broken.head.weight[0, 0] = float("nan")
    save_weights(broken, tmp_path / "nan.safetensors")
    with pytest.raises(WeightsError, match="holds NaN or infinite values in 1 tensors \\(head.weight\\)"):
        deit.create_model(pretrained=tmp_path / "nan.safetensors")
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["predict", "--weights", str(tmp_path / "nan.safetensors"), str(tmp_path / "x.png"), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "NaN" in err and len(err.strip().splitlines()) == 1


def test_the_memory_check_honours_the_process_limits():
    """Under `ulimit -v` (or a scheduler's limit on address space) a model of a million classes, whose weights
    would take 1.5 GB, is refused with its parameter count, where it ended in an out-of-memory line or a crash."""
    import subprocess
    import sys

    code = """
import resource, deit
from deit.models.metadata import WeightsError
used = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (used + 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    deit.create_model("deit_small_patch16_224", num_classes=1_000_000)
except WeightsError as e:
    print(e)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "M parameters" in result.stdout and "memory available" in result.stdout, (
        result.stdout + result.stderr
    )
