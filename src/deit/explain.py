"""`deit attention`: where a DeiT looks, as heat maps over the image.

Three maps per image, each a distribution over the patches:
- rollout (Abnar & Zuidema, 2020): the class token's row of the product over blocks of (head-averaged attention +
  identity, rows renormalised): attention traced through the residual stream from the input to the last block;
- the last block's class-token attention (head-averaged);
- for a distilled model, the last block's distillation-token attention too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .distill.attention import normalise


def attention_rollout(maps: list[torch.Tensor]) -> torch.Tensor:
    """Full attention of every block, first to last, each (B, heads, N, N) -> the rolled-out (B, N, N)."""
    rollout = None
    for attn in maps:
        a = attn.float().mean(dim=1)
        a = a + torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout


def attention_maps(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"rollout", "class token", ("distillation token")}: (B, patches) distributions for the images `x`."""
    return _logits_and_maps(model, x)[1]


@torch.inference_mode()
def _logits_and_maps(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = model.eval()
    logits, maps = model.forward_attention(x, blocks=None, form="full")
    ordered = [maps[i] for i in sorted(maps)]
    prefix = model.num_prefix_tokens
    last = ordered[-1].float().mean(dim=1)  # (B, N, N)
    out = {
        "rollout": normalise(attention_rollout(ordered)[:, 0, prefix:]),
        "class token": normalise(last[:, 0, prefix:]),
    }
    if prefix == 2:
        out["distillation token"] = normalise(last[:, 1, prefix:])
    return logits, out


def picture_names(files: list[Path]) -> list[str]:
    """`<stem>_attention.png` for each file; files that share a stem are told apart by as many of their folders as
    it takes, and by their extension when only that differs (a/x.png, b/x.png, a/x.jpg -> a_x_png, b_x, a_x_jpg):
    no picture overwrites another."""
    keys = [Path(f).with_suffix("") for f in files]  # folder and stem
    parts = [[p for p in key.parts if p != key.anchor] for key in keys]
    depth = [1] * len(files)
    while True:  # one folder more for a name shared with another folder's file
        names = ["_".join(p[-d:]) for p, d in zip(parts, depth)]
        deeper = [
            d + 1 if d < len(p) and any(m == n and k != key for m, k in zip(names, keys)) else d
            for n, key, p, d in zip(names, keys, parts, depth)
        ]
        if deeper == depth:
            break
        depth = deeper
    unique, seen = [], {}
    for f, key, name in zip(files, keys, names):
        if keys.count(key) > 1:  # x.png beside x.jpg
            name += "_" + Path(f).suffix.lstrip(".")
        seen[name] = seen.get(name, 0) + 1  # the very same file given twice
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return [f"{name}_attention.png" for name in unique]


def attention_pictures(model: torch.nn.Module, files: list[Path], out: Path) -> tuple[list[Path], list[str]]:
    """One PNG per readable image (see `picture_names`: the image, then each map over it); error lines for the
    rest."""
    from .data.preprocess import preprocessing

    prep = preprocessing(model)
    out.mkdir(parents=True, exist_ok=True)
    written, errors = [], []
    for path, name in zip(files, picture_names(files)):
        try:
            x = prep.read(path)
        except ValueError as e:
            errors.append(str(e))
            continue
        attention_picture(model, prep, x, path.name, out / name)
        written.append(out / name)
    return written, errors


def attention_picture(model: torch.nn.Module, prep, x: torch.Tensor, name: str, target: Path) -> None:
    """The PNG of one prepared image `x` (C, H, W): the image titled with its name and top-1 label, then each map
    over it. `prep`: the model's `data.preprocess.Preprocessing`."""
    from .viz import attention_grid

    mean, std = torch.tensor(prep.mean).view(-1, 1, 1), torch.tensor(prep.std).view(-1, 1, 1)
    logits, maps = _logits_and_maps(model, x[None])
    label = prep.class_names[int(logits.argmax())]
    shown = (x * std + mean).clamp(0, 1)
    shown = shown[0] if shown.shape[0] == 1 else shown.permute(1, 2, 0)
    attention_grid(shown[None], maps, target, [f"{name}: {label}"])
