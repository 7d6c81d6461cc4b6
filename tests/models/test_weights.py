"""Weights in and out: every supported layout loads and gives the reference implementation's outputs."""

import argparse
import builtins
import logging

import pytest
import timm
import torch
from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher, ViTConfig, ViTForImageClassification

import deit
from deit.models import WeightsError, export_weights, read_checkpoint, save_weights
from deit.models.fitting import resize_pos_embed

TINY_HF = dict(
    hidden_size=192,
    num_hidden_layers=12,
    num_attention_heads=3,
    intermediate_size=768,
    image_size=224,
    patch_size=16,
    layer_norm_eps=1e-6,
)


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224)


@pytest.mark.smoke
@pytest.mark.parametrize("distilled", [True, False])
def test_hf_transformers_saves_load_with_hf_logits(tmp_path, images, distilled):
    if distilled:  # distilled DeiT in HF: DeiTForImageClassificationWithTeacher
        hf = DeiTForImageClassificationWithTeacher(DeiTConfig(num_labels=10, **TINY_HF))
        name = "deit_tiny_distilled_patch16_224"
    else:  # plain DeiT in HF (facebook/deit-*-patch16-224): ViTForImageClassification
        hf = ViTForImageClassification(ViTConfig(num_labels=10, **TINY_HF))
        name = "deit_tiny_patch16_224"
    hf.eval().save_pretrained(tmp_path / "hf")
    with torch.no_grad():
        expected = hf(pixel_values=images).logits

    by_name = deit.create_model(name, pretrained=tmp_path / "hf").eval()  # class count from the checkpoint
    by_folder = deit.create_model(pretrained=tmp_path / "hf").eval()  # architecture from the checkpoint
    assert by_folder.model_name == name and by_folder.num_classes == 10
    into_model = deit.create_model(name, num_classes=10).eval()
    deit.load_weights(into_model, tmp_path / "hf" / "model.safetensors")  # the file alone
    with torch.no_grad():
        for model in (by_name, by_folder, into_model):
            assert (model(images) - expected).abs().max().item() <= 1e-4
    # the in-memory key names of newer transformers releases load too
    torch.save(hf.state_dict(), tmp_path / "in_memory.pth")
    assert same_state(deit.create_model(name, pretrained=tmp_path / "in_memory.pth"), by_name)


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_ours_to_hf_and_back_is_lossless(tmp_path, images, name):
    ours = deit.create_model(name, num_classes=7).eval()
    export_weights(ours, tmp_path / "hf", "hf")
    back = deit.create_model(pretrained=tmp_path / "hf").eval()
    assert same_state(ours, back) and back.model_name == name
    hf_cls = DeiTForImageClassificationWithTeacher if "distilled" in name else ViTForImageClassification
    hf = hf_cls.from_pretrained(tmp_path / "hf").eval()  # transformers itself reads our export
    with torch.no_grad():
        assert (hf(pixel_values=images).logits - ours(images)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_ours_to_timm_and_back_is_lossless(tmp_path, images, suffix):
    name = "deit_tiny_distilled_patch16_224"
    ours = deit.create_model(name).eval()
    path = export_weights(ours, tmp_path / f"timm{suffix}", "timm")
    reference = timm.create_model(name).eval()
    timm.models.load_checkpoint(reference, str(path), strict=True)
    with torch.no_grad():
        assert (reference(images) - ours(images)).abs().max().item() <= 1e-5
    assert same_state(deit.create_model(name, pretrained=path), ours)


def test_deit_save_reloads_the_same_model(tmp_path):
    model = deit.create_model("deit_pico_distilled_patch4_28", num_classes=10, in_chans=1, img_size=32)
    for target in (tmp_path / "folder", tmp_path / "single.safetensors"):
        save_weights(model, target)
        back = deit.create_model(pretrained=target)
        assert same_state(model, back)
        assert back.hparams == model.hparams and back.model_name == model.model_name
        assert type(back) is type(model)
        named = deit.create_model("deit_pico_distilled_patch4_28", pretrained=target)
        assert named.hparams == model.hparams  # class count, channels and size come from the saved config
    assert not list(tmp_path.glob("**/.*.tmp"))  # atomic writes leave no temporary files


def test_official_and_wrapped_checkpoints(tmp_path, images):
    name = "deit_tiny_distilled_patch16_224"
    reference = timm.create_model(name).eval()
    sd = reference.state_dict()
    # official DeiT zoo file; an official training checkpoint with its argparse args; DDP and torch.compile prefixes
    torch.save({"model": sd}, tmp_path / "zoo.pth")
    torch.save({"model": sd, "args": argparse.Namespace(lr=5e-4, model=name), "epoch": 3}, tmp_path / "train.pth")
    torch.save({f"module._orig_mod.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pth")
    for file in ("zoo.pth", "train.pth", "ddp.pth"):
        model = deit.create_model(name, pretrained=tmp_path / file).eval()
        with torch.no_grad():
            assert (model(images) - reference(images)).abs().max().item() <= 1e-5


def test_224_checkpoint_into_384_model(tmp_path):
    small = deit.create_model("deit_base_distilled_patch16_224")
    save_weights(small, tmp_path / "b224.safetensors")
    model = deit.create_model("deit_base_distilled_patch16_384")
    notes = deit.load_weights(model, tmp_path / "b224.safetensors")
    assert any("14x14 to a 24x24" in n for n in notes)
    assert model.pos_embed.shape == (1, 2 + 24 * 24, 768)
    assert torch.equal(model.pos_embed[:, :2], small.pos_embed[:, :2])  # cls and dist positions kept as they are
    assert torch.equal(model.blocks[5].attn.qkv.weight, small.blocks[5].attn.qkv.weight)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(1, 3, 384, 384))).all()


def test_pos_embed_resize_is_bicubic_on_the_grid():
    # a smooth ramp over the grid stays a ramp; the prefix token is untouched
    grid = torch.linspace(0, 1, 8)
    ramp = (grid[:, None] + grid[None, :]).reshape(1, 64, 1)
    pos = torch.cat([torch.full((1, 1, 1), 7.0), ramp], dim=1)
    out = resize_pos_embed(pos, 16, num_prefix=1)
    assert out.shape == (1, 1 + 256, 1) and out[0, 0, 0] == 7.0
    up = out[0, 1:, 0].reshape(16, 16)
    assert (up[:, 1:] >= up[:, :-1] - 1e-6).all() and (up[1:] >= up[:-1] - 1e-6).all()
    assert torch.equal(resize_pos_embed(pos, 8, num_prefix=1), pos)


def test_head_of_another_class_count_is_dropped_and_said(tmp_path, caplog):
    source = deit.create_model("deit_pico_distilled_patch4_28", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "imagenet.pth")
    model = deit.create_model("deit_pico_distilled_patch4_28", num_classes=10)
    head_before = model.head.weight.clone()
    with caplog.at_level(logging.WARNING, logger="deit"):
        notes = deit.load_weights(model, tmp_path / "imagenet.pth")
    assert any("1000 classes, the model 10" in n for n in notes)
    assert "head dropped" in caplog.text
    assert torch.equal(model.head.weight, head_before)
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_rgb_weights_into_grayscale_model_see_gray_images_alike(tmp_path):
    rgb = deit.create_model("deit_pico_patch4_28", num_classes=10).eval()
    save_weights(rgb, tmp_path / "rgb")
    gray = deit.create_model("deit_pico_patch4_28", in_chans=1, pretrained=tmp_path / "rgb").eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert (gray(x) - rgb(x.expand(-1, 3, -1, -1))).abs().max().item() <= 1e-5


def test_checkpoint_of_another_architecture_is_refused_with_the_mismatch(tmp_path):
    torch.save({"model": deit.create_model("deit_small_patch16_224").state_dict()}, tmp_path / "small.pth")
    model = deit.create_model("deit_tiny_patch16_224")
    with pytest.raises(WeightsError) as info:
        deit.load_weights(model, tmp_path / "small.pth")
    message = str(info.value)
    assert "\n" not in message
    assert "does not fit deit_tiny_patch16_224" in message
    assert "blocks.0.norm1.weight: checkpoint (384,), model (192,)" in message or "(1, 1, 384)" in message
    assert "it looks like deit_small_patch16_224" in message
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match=r"missing from the checkpoint \(cls_token"):
        deit.load_weights(model, tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match="not a DeiT/ViT checkpoint"):
        deit.create_model(pretrained=tmp_path / "resnet.pth")


def test_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return builtins.open, (str(marker), "w")

    torch.save({"model": {"cls_token": torch.zeros(1)}, "extra": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="refusing to load .*evil.pth.* could run code"):
        deit.load_weights(deit.create_model("deit_pico_patch4_28"), tmp_path / "evil.pth")
    assert not marker.exists()


def test_unreadable_files_get_one_clear_line(tmp_path):
    model = deit.create_model("deit_pico_patch4_28")
    save_weights(model, tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    torch.save(model.state_dict(), tmp_path / "ok.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "ok.pth").read_bytes()[:500])
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    (tmp_path / "empty_folder").mkdir()
    cases = {
        "missing.pth": "weights not found",
        "cut.safetensors": "cannot read .* as safetensors",
        "cut.pth": "cannot read .* as a PyTorch checkpoint",
        "notes.pth": "cannot read .* as a PyTorch checkpoint",
        "empty_folder": "folder without model.safetensors, pytorch_model.bin, checkpoint.pth",
    }
    for file, pattern in cases.items():
        with pytest.raises(WeightsError, match=pattern) as info:
            read_checkpoint(tmp_path / file)
        assert "\n" not in str(info.value)


def test_plain_weights_into_a_distilled_model_and_back(tmp_path):
    plain = deit.create_model("deit_pico_patch4_28", num_classes=10).eval()
    save_weights(plain, tmp_path / "plain")
    distilled = deit.create_model("deit_pico_distilled_patch4_28", pretrained=tmp_path / "plain").eval()
    assert torch.equal(distilled.dist_token, plain.cls_token) and torch.equal(
        distilled.head_dist.weight, plain.head.weight
    )
    assert torch.equal(distilled.pos_embed[:, 1], plain.pos_embed[:, 0])
    save_weights(distilled, tmp_path / "distilled")
    back = deit.create_model("deit_pico_patch4_28", pretrained=tmp_path / "distilled").eval()
    for key, value in plain.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
