"""Our DeiT against timm's: same names, same tensors, same outputs; attention maps; shapes and errors."""

import pytest
import timm
import torch
from timm.models.deit import VisionTransformerDistilled as TimmDistilled
from timm.models.vision_transformer import VisionTransformer as TimmViT

import deit
from deit.models import MODELS

# Parameter counts from the DeiT paper / official model zoo.
PAPER_PARAMS = {
    "deit_tiny_patch16_224": 5_717_416,
    "deit_tiny_distilled_patch16_224": 5_910_800,
    "deit_small_patch16_224": 22_050_664,
    "deit_small_distilled_patch16_224": 22_436_432,
    "deit_base_patch16_224": 86_567_656,
    "deit_base_distilled_patch16_224": 87_338_192,
}


def timm_model(name: str, in_chans: int = 3):
    """timm's model of that name; for our CPU-sized configs, timm's ViT class with the same configuration."""
    if name in timm.list_models("deit_*"):
        return timm.create_model(name, in_chans=in_chans)
    spec = MODELS[name]
    cls = TimmDistilled if spec.distilled else TimmViT
    return cls(
        img_size=spec.img_size,
        patch_size=spec.patch_size,
        in_chans=in_chans,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
    )


@pytest.mark.smoke
@pytest.mark.parametrize("name", [n for n in deit.list_models() if not n.startswith("deit3_")])  # test_deit3.py
def test_same_network_as_timm(name):
    spec = MODELS[name]
    in_chans = 1 if spec.img_size <= 32 else 3  # the CPU configs are for digits: check grayscale there
    reference = timm_model(name, in_chans).eval()
    ours = deit.create_model(name, in_chans=in_chans).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, in_chans, spec.img_size, spec.img_size)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() <= 1e-5
        if spec.distilled:
            ours.train()
            reference.train()
            reference.set_distilled_training(True)
            cls_ours, dist_ours = ours(x)
            cls_ref, dist_ref = reference(x)
            assert (cls_ours - cls_ref).abs().max().item() <= 1e-5
            assert (dist_ours - dist_ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name, expected", PAPER_PARAMS.items())
def test_parameter_counts_match_the_paper(name, expected):
    with torch.device("meta"):
        model = deit.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_distilled_returns_both_heads_in_training_and_their_mean_in_eval():
    model = deit.create_model("deit_pico_distilled_patch4_28", num_classes=10, in_chans=1)
    x = torch.randn(3, 1, 28, 28)
    model.train()
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2 and all(o.shape == (3, 10) for o in out)
    model.eval()
    with torch.no_grad():
        cls_logits, dist_logits = (
            model.head(model.forward_features(x)[:, 0]),
            model.head_dist(model.forward_features(x)[:, 1]),
        )
        assert torch.allclose(model(x), (cls_logits + dist_logits) / 2, atol=1e-6)
    plain = deit.create_model("deit_pico_patch4_28", num_classes=10, in_chans=1).train()
    assert plain(x).shape == (3, 10)


@pytest.mark.parametrize("name", ["deit_pico_distilled_patch4_28", "deit_tiny_patch16_224"])
def test_explicit_attention_path_matches_sdpa(name):
    model = deit.create_model(name).eval()
    size = model.hparams["img_size"]
    x = torch.randn(2, 3, size, size)
    tokens = model.embed(x)
    with torch.no_grad():
        for block in model.blocks:
            fused, none = block(tokens)
            explicit, attn = block(tokens, "full")
            assert none is None
            assert (fused - explicit).abs().max().item() <= 1e-5
            N = tokens.shape[1]
            assert attn.shape == (2, model.num_heads, N, N)
            assert torch.allclose(attn.sum(-1), torch.ones(2, model.num_heads, N), atol=1e-5)
            tokens = fused


@pytest.mark.parametrize("name", ["deit_pico_distilled_patch7_28", "deit3_pico_patch7_28"])
def test_last_block_computing_the_prefix_tokens_only_is_the_whole_block_read_there(name):
    """forward() has the last block compute the prefix tokens alone (the head reads nothing else): the same
    outputs, and the same gradients, as the whole block's outputs read at those tokens; drop path included (its
    draws are per sample, as many either way). In float64: the two differ only in the order of their sums, so
    their rounding stays far below the tolerance on any CPU."""
    torch.manual_seed(0)
    model = deit.create_model(name, num_classes=10, in_chans=1, drop_path_rate=0.3).double().train()
    keep, block = model.num_prefix_tokens, model.blocks[-1]
    tokens = torch.randn(4, 1 + 16 + keep, model.embed_dim, dtype=torch.float64)
    grads = []
    for out_of in (lambda t: block(t)[0][:, :keep], lambda t: block(t, keep=keep)[0]):
        torch.manual_seed(1)
        x = tokens.clone().requires_grad_()
        out = out_of(x)
        out.pow(2).sum().backward()
        grads.append([out.detach(), x.grad] + [p.grad.clone() for p in block.parameters()])
        block.zero_grad(set_to_none=True)
    assert grads[0][0].shape == (4, keep, model.embed_dim)
    for whole, prefix in zip(*grads):
        assert torch.allclose(prefix, whole, rtol=1e-10, atol=1e-12)
    # and the model's logits are the head on all tokens' features
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        torch.manual_seed(2)
        logits = model(x)
        torch.manual_seed(2)
        features = model.forward_features(x)
    expected = model.forward_head(features)
    for got, want in zip(*(o if isinstance(o, tuple) else (o,) for o in (logits, expected))):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_forward_attention_gives_chosen_maps_and_the_same_output():
    model = deit.create_model("deit_pico_distilled_patch4_28").eval()
    x = torch.randn(2, 3, 28, 28)
    N = 2 + 49
    with torch.no_grad():
        logits, maps = model.forward_attention(x, blocks=[0, -1])
        assert torch.allclose(logits, model(x), atol=1e-5)
        assert sorted(maps) == [0, 3] and maps[3].shape == (2, 4, N, N)
        _, rows = model.forward_attention(x, blocks=-1, form="cls")
        assert rows[3].shape == (2, 4, N)
        assert torch.allclose(rows[3], maps[3][:, :, 0], atol=1e-6)  # the cheap row is the full map's cls row
        assert torch.allclose(rows[3].sum(-1), torch.ones(2, 4), atol=1e-5)
        _, every = model.forward_attention(x)
        assert sorted(every) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="block 4 does not exist"):
        model.forward_attention(x, blocks=4)
    with pytest.raises(ValueError, match="form"):
        model.forward_attention(x, form="rows")


@pytest.mark.parametrize("name", ["deit_pico_distilled_patch7_28", "deit3_pico_patch7_28"])
@pytest.mark.parametrize("blocks", [[-1], [1, 3]])
def test_forward_attention_with_class_rows_is_the_whole_last_block_read_at_the_prefix(name, blocks):
    """With class-token rows (attention distillation's student), forward_attention has its last block compute the
    prefix tokens alone: the same logits, rows and gradients as every block computing every token. float64, drop
    path on: only the order of sums differs."""
    torch.manual_seed(0)
    model = deit.create_model(name, num_classes=10, in_chans=1, drop_path_rate=0.3).double().train()
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)

    def whole(x):
        tokens, rows = model.embed(x), {}
        for i, block in enumerate(model.blocks):
            tokens, attn = block(tokens, "cls" if i in {b % len(model.blocks) for b in blocks} else None)
            if attn is not None:
                rows[i] = attn
        return model.forward_head(model.norm(tokens)), rows

    results = []
    for forward in (whole, lambda x: model.forward_attention(x, blocks=blocks, form="cls")):
        torch.manual_seed(1)
        logits, rows = forward(x)
        logits = logits if isinstance(logits, tuple) else (logits,)
        loss = sum(t.logsumexp(-1).sum() for t in logits) + sum(r[..., 1:].pow(2).sum() for r in rows.values())
        loss.backward()
        results.append([t.detach() for t in logits] + [rows[k].detach() for k in sorted(rows)])
        results[-1] += [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
    assert len(results[0]) == len(results[1])
    for want, got in zip(*results):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_attention_rows_carry_gradient_to_qkv():
    model = deit.create_model("deit_pico_patch4_28").train()
    _, maps = model.forward_attention(torch.randn(2, 3, 28, 28), blocks=[1], form="cls")
    maps[1][..., 1:].pow(2).sum().backward()
    assert model.blocks[1].attn.qkv.weight.grad.abs().sum() > 0
    assert model.blocks[1].mlp.fc1.weight.grad is None  # after the attention: not on the path


def test_stochastic_depth_only_in_training():
    model = deit.create_model("deit_pico_patch4_28", drop_path_rate=0.5)
    assert [b.drop_path for b in model.blocks] == pytest.approx([0.0, 0.5 / 3, 1.0 / 3, 0.5])
    x = torch.randn(8, 3, 28, 28)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_bad_model_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown model 'deit_huge'"):
        deit.create_model("deit_huge")
    with pytest.raises(ValueError, match="unknown model option dropout"):
        deit.create_model("deit_pico_patch4_28", dropout=0.1)
    with pytest.raises(ValueError, match="img_size=30 is not divisible by patch_size=4"):
        deit.create_model("deit_pico_patch4_28", img_size=30)
    with pytest.raises(ValueError, match="embed_dim=64 is not divisible by num_heads=5"):
        deit.create_model("deit_pico_patch4_28", num_heads=5)
    model = deit.create_model("deit_pico_patch4_28", in_chans=1)
    with pytest.raises(ValueError, match=r"input is 3x32x32 .* takes 1x28x28"):
        model(torch.randn(1, 3, 32, 32))
