"""`deit export`: ONNX checked against PyTorch in onnxruntime; safetensors reloadable with the training data's names."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import deit
from deit.cli import main
from deit.data import build_dataset, eval_transform
from deit.export import export_model


def real_digits(count: int) -> torch.Tensor:
    val, info = build_dataset("mnist5k", None, False)
    val.transform = eval_transform(28, mean=info.mean, std=info.std, crop_ratio=1.0)
    return torch.stack([val[i][0] for i in range(count)])


@pytest.mark.smoke
@pytest.mark.parametrize("name", ["deit_pico_patch7_28", "deit_pico_distilled_patch7_28"])
def test_onnx_matches_pytorch_at_batch_1_and_7_on_random_and_real_digits(name, tmp_path):
    model = deit.create_model(name, num_classes=10, in_chans=1).eval()
    digits = real_digits(7)
    result = export_model(model, tmp_path / "m.onnx", "onnx", inputs=digits)
    assert result["max_abs_diff"] <= 1e-4 and result["checked_batches"] == [1, 7, 7]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # a dynamic batch axis
    for x in (digits[:1], digits, torch.randn(3, 1, 28, 28)):
        got = session.run(None, {"images": x.numpy()})[0]
        with torch.inference_mode():
            assert np.abs(got - model(x).numpy()).max() <= 1e-4


def test_a_training_checkpoint_saved_as_a_model_keeps_class_names(trained, tmp_path, capsys):
    assert main(["convert", str(trained), str(tmp_path / "s"), "--to", "deit"]) == 0
    reloaded = deit.create_model(pretrained=tmp_path / "s")
    original = deit.create_model(pretrained=trained)
    assert reloaded.data_config["class_names"] == [str(d) for d in range(10)]
    assert reloaded.data_config == original.data_config and reloaded.model_name == "deit_pico_patch7_28"
    x = real_digits(4)
    with torch.inference_mode():
        assert torch.equal(reloaded.eval()(x), original.eval()(x))
    assert main(["export", "--weights", str(trained), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 0
    assert "matches PyTorch within" in capsys.readouterr().out


def test_a_wrong_weights_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "notes.pth"
    bad.write_text("not weights")
    assert main(["export", "--weights", str(bad), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "notes.pth" in err
    assert not (tmp_path / "m.onnx").exists()
