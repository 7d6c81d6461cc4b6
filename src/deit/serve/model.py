"""The served model: PyTorch weights or an exported ONNX file, its preparation of images, its top-k and attention
picture; the compute threads it gets."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

BACKENDS = ("torch", "onnx")


class Model:
    """The served model (a PyTorch module, or an exported ONNX file's `export.OnnxModel`), its preparation of
    images, and its top-k over a prepared batch."""

    def __init__(self, model, source: str, topk: int = 5):
        from ..data.preprocess import preprocessing
        from ..export import OnnxModel

        self.model = model.eval()
        self.backend = "onnx" if isinstance(model, OnnxModel) else "torch"
        self.prep = preprocessing(model)
        self.source = source
        self.k = min(topk, len(self.prep.class_names))

    def topk(self, batch: torch.Tensor) -> list[dict]:
        from ..predict import rank, topk_json

        sources = [f"image {i + 1} of a batch" for i in range(len(batch))]
        return [
            {"topk": topk_json(*ranked)} for ranked in rank(self.model, batch, self.prep.class_names, self.k, sources)
        ]

    @property
    def draws_attention(self) -> bool:
        """The maps are read from the attention inside the model: an ONNX graph gives its logits only."""
        return self.backend == "torch"

    def attention_png(self, x: torch.Tensor, name: str) -> bytes:
        from ..explain import attention_picture

        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / "attention.png"
            attention_picture(self.model, self.prep, x, name, target)
            return target.read_bytes()

    def describe(self) -> dict:
        hp = getattr(self.model, "hparams", {})
        count = getattr(self.model, "parameter_count", None)
        return {
            "model": getattr(self.model, "model_name", None),
            "classes": list(self.prep.class_names),
            "input_size": hp.get("img_size"),
            "in_chans": hp.get("in_chans"),
            "parameters": count if self.backend == "onnx" else sum(p.numel() for p in self.model.parameters()),
            "weights": self.source,
            "backend": self.backend,
            "attention": self.draws_attention,
        }


def compute_threads(asked: int | None) -> int:
    """The model's compute threads: as asked, else the cores but one, left to the event loop that parses requests
    and decodes images (measured in docs/serve.md)."""
    return asked or max(1, (os.cpu_count() or 1) - 1)


def serving_model(weights: str, model_name: str | None, backend: str | None, threads: int | None = None):
    """The model to serve: PyTorch for any weights `deit predict` takes, onnxruntime (with `threads` threads) for a
    file of `deit export`, the default for a .onnx file."""
    from ..export import load_onnx
    from ..models import create_model

    is_onnx = str(weights).endswith(".onnx")
    backend = backend or ("onnx" if is_onnx else "torch")
    if backend == "onnx":
        if not is_onnx:
            raise ValueError(
                f"--backend onnx serves an exported .onnx file, not {weights}: deit export --weights {weights} "
                "-o model.onnx, then --weights model.onnx"
            )
        if model_name is not None:
            raise ValueError("--model does not apply to an ONNX file: its architecture is in the file")
        return load_onnx(weights, threads=threads)
    if is_onnx:
        raise ValueError(f"{weights} is an ONNX file: serve it with --backend onnx")
    return create_model(model_name, pretrained=weights)
