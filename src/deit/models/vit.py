"""The DeiT network: a ViT encoder with a class token and, when distilled, a distillation token.

Read top to bottom: PatchEmbed -> Attention -> Mlp -> LayerScale -> Block -> VisionTransformer ->
DistilledVisionTransformer. Parameter names follow the official DeiT / timm models (`cls_token`, `dist_token`,
`pos_embed`, `blocks.N.attn.qkv`, `blocks.N.ls1.gamma`, `head_dist`, ...) so their checkpoints load with
`strict=True` and give the same outputs.

DeiT III ("DeiT III: Revenge of the ViT", Touvron et al. 2022) is the same network with two changes, both
options here: LayerScale on both residual branches (`layer_scale_init`), and position embeddings for the patches
only, the class (and distillation) token joining after them (`no_embed_class`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Which attention a block reports, besides its output: None (none, fused SDPA path), "full" (the softmax map
# (B, heads, N, N), explicit path), "cls" (the class-token row (B, heads, N), computed beside the fused path).
ATTENTION_FORMS = ("full", "cls")


class PatchEmbed(nn.Module):
    """Cut the image into non-overlapping patches and project each to `embed_dim` (one strided convolution)."""

    def __init__(self, *, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not divisible by patch_size={patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, C, H, W = x.shape
        if self.in_chans != C or self.img_size != H or self.img_size != W:
            raise ValueError(
                f"input is {C}x{H}x{W} (channels x height x width) but the model takes "
                f"{self.in_chans}x{self.img_size}x{self.img_size}; resize the images or create the model "
                f"with img_size={H}, in_chans={C}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    The normal path is `F.scaled_dot_product_attention` (fused kernels). When the caller asks for the attention
    map, the "full" form computes softmax(q k^T / sqrt(d)) explicitly; the "cls" form keeps the fused path and
    computes only the class-token row beside it, O(N) instead of O(N^2).
    """

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, attn_form: str | None = None, queries: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, N, C) tokens -> (B, N, C), or with `queries` the output of the first `queries` tokens only (every
        token still a key and a value), and the attention map `attn_form` asks for (None without it)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        if queries is not None:
            q = q[:, :, :queries]
        attn = None
        if attn_form == "full":
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, N, N)
            x = attn @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v)
            if attn_form == "cls":
                attn = ((q[:, :, :1] * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1).squeeze(2)  # (B, heads, N)
        x = x.transpose(1, 2).reshape(B, q.shape[2], C)
        return self.proj(x), attn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact GELU, as in the official models


class LayerScale(nn.Module):
    """A learned per-channel scale of a residual branch, started small (DeiT III: 1e-6) so that a deep network
    starts close to the identity."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch for a random subset of samples, rescaling the rest."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)); with `layer_scale_init`, each branch
    scaled per channel (LayerScale) before it is added."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        layer_scale_init: float | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        # None without LayerScale: a small model's step is mostly per-call cost, an Identity module is one more
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else None
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else None
        self.drop_path = drop_path

    def forward(
        self, x: torch.Tensor, attn_form: str | None = None, keep: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens (B, N, C) -> (B, N, C), or with `keep` the first `keep` tokens' outputs only, computed without the
        others' (the rest only serve as keys and values); and the attention map `attn_form` asks for."""
        y, attn = self.attn(self.norm1(x), attn_form, keep)
        if keep is not None:
            x = x[:, :keep]
        x = x + drop_path(y if self.ls1 is None else self.ls1(y), self.drop_path, self.training)
        y = self.mlp(self.norm2(x))
        x = x + drop_path(y if self.ls2 is None else self.ls2(y), self.drop_path, self.training)
        return x, attn


class VisionTransformer(nn.Module):
    """DeiT without a distillation token: [cls, patches] -> blocks -> norm -> head(cls)."""

    num_prefix_tokens = 1  # tokens before the patches: cls
    distilled = False  # has a distillation token and head
    model_name: str | None = None  # the registered name, set by create_model
    data_config: dict | None = None  # class names and preprocessing of the data it was trained on, when known

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = None,
        no_embed_class: bool = False,
        drop_path_uniform: bool = False,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be at least 1")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate} must be in [0, 1)")
        # Everything needed to build this network again: saved beside its weights (see weights.save_weights).
        self.hparams = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
            layer_scale_init=layer_scale_init,
            no_embed_class=no_embed_class,
            drop_path_uniform=drop_path_uniform,
        )
        self.num_classes = num_classes
        self.no_embed_class = no_embed_class
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + self.pos_prefix_tokens, embed_dim))
        # Stochastic depth grows linearly with depth, from 0 at the first block to drop_path_rate at the last (DeiT,
        # timm); DeiT III's official models drop every block at the same rate (drop_path_uniform).
        rates = [drop_path_rate if drop_path_uniform else drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=r,
                layer_scale_init=layer_scale_init,
            )
            for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(_init_linear)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def no_weight_decay(self) -> set[str]:
        """Parameters to keep out of weight decay besides norms and biases (read by timm's optimizer factory)."""
        return {"pos_embed", "cls_token", "dist_token"}

    @property
    def num_heads(self) -> int:
        return self.blocks[0].attn.num_heads

    @property
    def pos_prefix_tokens(self) -> int:
        """The prefix tokens with a position embedding: all of them (DeiT), or none (DeiT III)."""
        return 0 if self.no_embed_class else self.num_prefix_tokens

    def prefix_tokens(self, B: int) -> torch.Tensor:
        return self.cls_token.expand(B, -1, -1)  # (B, 1, C)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, N, C)
        if self.no_embed_class:
            return torch.cat([self.prefix_tokens(x.shape[0]), x + self.pos_embed], dim=1)
        x = torch.cat([self.prefix_tokens(x.shape[0]), x], dim=1)  # (B, prefix + N, C)
        return x + self.pos_embed

    def encode(self, x: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        """Images (B, in_chans, H, W) -> the last block's tokens (B, prefix + N, C), before the final norm; with
        `keep`, the first `keep` of them only, the last block computing no others."""
        x = self.embed(x)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x, _ = block(x, keep=keep if i == last else None)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_chans, H, W) -> normalised tokens (B, prefix + N, C)."""
        return self.norm(self.encode(x))

    def forward_head(self, x: torch.Tensor):
        return self.head(x[:, 0])

    def forward(self, x: torch.Tensor, attn_blocks: int | list[int] | None = None, attn_form: str = "full"):
        """Logits; with `attn_blocks`, (logits, {block: attention}) as `forward_attention` gives them (a DDP-wrapped
        model reaches that path only through forward)."""
        if attn_blocks is not None:
            return self.forward_attention(x, attn_blocks, attn_form)
        # The head reads the prefix tokens only, and after the last attention every token goes on alone (LayerNorm,
        # MLP): the last block computes the prefix tokens' outputs only (the demo's student's train step, measured in
        # docs/benchmarks.md).
        return self.forward_head(self.norm(self.encode(x, keep=self.num_prefix_tokens)))

    def forward_attention(
        self, x: torch.Tensor, blocks: int | list[int] | tuple[int, ...] | None = None, form: str = "full"
    ) -> tuple[object, dict[int, torch.Tensor]]:
        """The model's output and the softmax attention of the chosen blocks.

        `blocks`: indices (negative ones count from the end), or None for all. `form`: "full" gives
        (B, heads, N, N) maps; "cls" gives the class token's row (B, heads, N), cheaply. Tokens are ordered
        [cls, (dist,) patches]. Blocks not chosen keep the fused SDPA path.
        """
        if form not in ATTENTION_FORMS:
            raise ValueError(f"form={form!r} is not one of {ATTENTION_FORMS}")
        depth = len(self.blocks)
        chosen = range(depth) if blocks is None else [blocks] if isinstance(blocks, int) else blocks
        wanted = set()
        for i in chosen:
            if not -depth <= i < depth:
                raise ValueError(f"block {i} does not exist: the model has {depth} blocks (0..{depth - 1})")
            wanted.add(i % depth)
        x = self.embed(x)
        last = depth - 1
        # as in forward(), the last block computes the prefix tokens' outputs only, unless its full map is asked
        # for (every token's row): the students of attention distillation take class-token rows
        keep = None if (last in wanted and form == "full") else self.num_prefix_tokens
        maps = {}
        for i, block in enumerate(self.blocks):
            x, attn = block(x, form if i in wanted else None, keep if i == last else None)
            if attn is not None:
                maps[i] = attn
        return self.forward_head(self.norm(x)), maps


class DistilledVisionTransformer(VisionTransformer):
    """DeiT with a distillation token: [cls, dist, patches]; `head` reads cls, `head_dist` reads dist.

    Training mode returns (cls_logits, dist_logits) for the two losses; eval mode returns their mean, the
    official DeiT prediction.
    """

    num_prefix_tokens = 2  # cls, dist
    distilled = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dist_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.head_dist = nn.Linear(self.embed_dim, self.num_classes)
        nn.init.trunc_normal_(self.dist_token, std=0.02)
        _init_linear(self.head_dist)

    def prefix_tokens(self, B: int) -> torch.Tensor:
        return torch.cat([self.cls_token.expand(B, -1, -1), self.dist_token.expand(B, -1, -1)], dim=1)  # (B, 2, C)

    def forward_head(self, x: torch.Tensor):
        cls_logits, dist_logits = self.head(x[:, 0]), self.head_dist(x[:, 1])
        if self.training:
            return cls_logits, dist_logits
        return (cls_logits + dist_logits) / 2


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
