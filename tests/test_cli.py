"""The `deit` command line: listing models, converting weights, one-line errors."""

import subprocess
import sys

import torch

import deit
from deit.cli import main


def test_models_lists_every_name_with_params_and_gflops(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in deit.list_models():
        assert name in out
    tiny = next(line for line in out.splitlines() if "deit_tiny_patch16_224 " in line)
    assert "5.72M" in tiny and "1.25" in tiny  # DeiT-Ti: 5.7M parameters, 1.3 GFLOPs in the paper
    small = next(line for line in out.splitlines() if "deit_small_patch16_224 " in line)
    assert "22.05M" in small and "4.6" in small


def test_convert_between_layouts(tmp_path, capsys):
    model = deit.create_model("deit_pico_distilled_patch4_28", num_classes=10)
    torch.save({"model": model.state_dict()}, tmp_path / "official.pth")
    assert main(["convert", str(tmp_path / "official.pth"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "timm.safetensors"), "--to", "timm"]) == 0
    assert main(["convert", str(tmp_path / "timm.safetensors"), str(tmp_path / "ours"), "--to", "deit"]) == 0
    assert "wrote" in capsys.readouterr().out
    back = deit.create_model(pretrained=tmp_path / "ours")
    assert back.model_name == "deit_pico_distilled_patch4_28"
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_errors_are_one_line_without_traceback(tmp_path):
    torch.save(deit.create_model("deit_pico_patch4_28").state_dict(), tmp_path / "pico.pth")
    torch.save(deit.create_model("deit3_pico_distilled_patch7_28").state_dict(), tmp_path / "deit3.pth")
    cases = [
        ["convert", str(tmp_path / "nothing.pth"), str(tmp_path / "out"), "--to", "hf"],
        ["convert", str(tmp_path / "pico.pth"), str(tmp_path / "out"), "--to", "hf", "--model", "deit_nano_patch4_32"],
        ["convert", str(tmp_path / "deit3.pth"), str(tmp_path / "out"), "--to", "timm"],  # timm has no such model
    ]
    for argv in cases:
        result = subprocess.run([sys.executable, "-m", "deit", *argv], capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("deit convert: error: "), result.stderr
