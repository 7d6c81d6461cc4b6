"""`deit export`: a trained model as ONNX, checked against onnxruntime at export time (safetensors with its config
is `deit convert --to deit`, `models.weights.save_weights`).

ONNX: the model in eval mode, one input `images` (batch, channels, size, size) with a dynamic batch axis, one
output `logits` (a distilled model's two heads averaged, as at inference). The file is written only after
onnxruntime has run it at batch 1 and 7 and matched PyTorch within `tolerance`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .files import atomic_write

FORMATS = ("onnx",)


def export_model(
    model: torch.nn.Module,
    path: str | os.PathLike,
    fmt: str = "onnx",
    *,
    inputs: torch.Tensor | None = None,
    tolerance: float = 1e-4,
) -> dict:
    """Write `model` as `fmt` to `path`; returns what was written and, for ONNX, the largest difference found."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return export_onnx(model, path, inputs=inputs, tolerance=tolerance)


def export_onnx(
    model: torch.nn.Module, path: Path, *, inputs: torch.Tensor | None = None, tolerance: float = 1e-4, opset: int = 17
) -> dict:
    """ONNX with a dynamic batch axis, verified in onnxruntime (random inputs at batch 1 and 7, and `inputs`)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError("ONNX export needs onnx and onnxruntime: pip install 'deit[export]'") from None
    import warnings

    model = model.eval().cpu()
    hp = model.hparams
    shape = (hp["in_chans"], hp["img_size"], hp["img_size"])
    generator = torch.Generator().manual_seed(0)
    checks = [torch.randn(b, *shape, generator=generator) for b in (1, 7)]
    if inputs is not None:
        checks.append(inputs.float().cpu())
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # the tracer notes the input-size check it cannot keep: the size is fixed
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (checks[0],),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        for x in checks:
            with torch.inference_mode():
                expected = model(x)
            got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
            worst = (got - expected).abs().max().item()
            diffs.append(worst)
            if not worst <= tolerance:
                raise ValueError(
                    f"the ONNX model differs from PyTorch by {worst:.2e} at batch {len(x)} (tolerance "
                    f"{tolerance:g}); nothing written. Try another --opset"
                )

    diffs: list[float] = []
    atomic_write(path, write)
    return {
        "path": str(path),
        "format": "onnx",
        "max_abs_diff": max(diffs),
        "checked_batches": [len(x) for x in checks],
    }
