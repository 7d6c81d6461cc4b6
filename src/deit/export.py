"""`deit export`: a trained model as ONNX, checked against onnxruntime at export time (safetensors with its config
is `deit convert --to deit`, `models.weights.save_weights`).

ONNX: the model in eval mode, one input `images` (batch, channels, size, size) with a dynamic batch axis, one
output `logits` (a distilled model's two heads averaged, as at inference). Its `metadata_props` carry the model's
deit config (`deit_config`: model name, hparams, class names and preprocessing, as a safetensors file's metadata
does) and its parameter count, so the file alone serves (`load_onnx`, `deit serve --backend onnx`). The file is
written only after onnxruntime has run it at batch 1 and 7 and matched PyTorch within `tolerance`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .files import atomic_write
from .messages import first_line

FORMATS = ("onnx",)
CONFIG_PROP = "deit_config"  # the metadata_props keys written and read
PARAMETERS_PROP = "parameters"


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

    import onnx

    from .models.weights import deit_config

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
        graph = onnx.load(str(tmp))
        onnx.helper.set_model_props(
            graph,
            {
                CONFIG_PROP: json.dumps(deit_config(model)),
                PARAMETERS_PROP: str(sum(p.numel() for p in model.parameters())),
            },
        )
        onnx.save(graph, str(tmp))
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


class OnnxModel:
    """An exported ONNX file run by onnxruntime, with what `deit predict` and `deit serve` read of a PyTorch model:
    called on a batch (B, C, H, W) it returns the logits as a tensor; `hparams`, `data_config`, `num_classes`,
    `model_name` and `distilled` come from the file's deit config."""

    def __init__(self, path: Path, session, config: dict, parameter_count: int | None):
        self.path, self.session = path, session
        self.hparams = config["hparams"]
        self.data_config = config.get("data") or {}
        self.num_classes = self.hparams["num_classes"]
        self.model_name = config.get("model")
        self.distilled = config.get("distilled", False)
        self.parameter_count = parameter_count

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        images = batch.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(["logits"], {"images": images})[0])

    def eval(self) -> OnnxModel:
        return self

    def parameters(self):
        """The file's weights as tensors (read on demand: only a report of damaged weights looks at them)."""
        import onnx
        from onnx import numpy_helper

        for initializer in onnx.load(str(self.path)).graph.initializer:
            yield torch.from_numpy(numpy_helper.to_array(initializer).copy())


def load_onnx(path: str | os.PathLike, threads: int | None = None) -> OnnxModel:
    """An ONNX file written by `deit export`, its deit config checked as any weights file's is (WeightsError
    naming the file and the fault otherwise)."""
    from .models.metadata import WeightsError, check_config

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"ONNX file not found: {path}; write one with deit export --weights W -o {path.name}")
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError("the onnx backend needs onnxruntime: pip install 'deit[export]'") from None
    try:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise WeightsError(f"cannot read {path} as ONNX ({first_line(e)}); export it again with deit export") from None
    props = session.get_modelmeta().custom_metadata_map
    if CONFIG_PROP not in props:
        raise WeightsError(f"{path} carries no {CONFIG_PROP} (class names, preprocessing): export it with deit export")
    try:
        config = check_config(json.loads(props[CONFIG_PROP]), str(path))
    except ValueError as e:
        if isinstance(e, WeightsError):
            raise
        raise WeightsError(f"{path}: its {CONFIG_PROP} is not valid JSON ({first_line(e)})") from None
    if config["family"] != "deit":
        raise WeightsError(f"{path} holds a {config['family']}, not a DeiT; serve a DeiT student")
    inputs = session.get_inputs()
    if [i.name for i in inputs] != ["images"] or [o.name for o in session.get_outputs()] != ["logits"]:
        raise WeightsError(f"{path} does not take 'images' and give 'logits' as deit export writes; export it again")
    hp = config["hparams"]
    if list(inputs[0].shape[1:]) != [hp["in_chans"], hp["img_size"], hp["img_size"]]:
        raise WeightsError(
            f"{path}: its input {inputs[0].shape} does not match its config ({hp['in_chans']} channels, "
            f"{hp['img_size']} pixels); export it again"
        )
    count = props.get(PARAMETERS_PROP, "")
    return OnnxModel(path, session, config, int(count) if count.isdigit() and len(count) <= 15 else None)
