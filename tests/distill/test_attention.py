"""Attention distillation: maps are distributions over patches, the loss behaves, gradients go where they should."""

import pytest
import torch

import deit
from deit.distill import (
    AttentionDistillation,
    DistillationLoss,
    activation_map,
    attention_loss,
    patch_attention,
    resize_map,
)
from deit.distill.attention import teacher_logits_and_maps
from deit.teachers import SmallCNN, Teacher


def student_rows(model, x, blocks=(-1,)):
    _, rows = model.forward_attention(x, blocks=list(blocks), form="cls")
    return rows


def test_student_and_teacher_maps_are_distributions_over_patches():
    student = deit.create_model("deit_pico_distilled_patch4_28", in_chans=1, num_classes=10).eval()
    x = torch.randn(3, 1, 28, 28)
    rows = student_rows(student, x)[3]
    for per_head, shape in ((False, (3, 49)), (True, (3, 4, 49))):
        maps = patch_attention(rows, student.num_prefix_tokens, per_head)
        assert maps.shape == shape and torch.allclose(maps.sum(-1), torch.ones(shape[:-1]), atol=1e-5)
    cnn = Teacher(SmallCNN(num_classes=10, in_chans=1), "small_cnn", 10)
    logits, maps = teacher_logits_and_maps(cnn, x, blocks=(-1, -2), grid=7, student_heads=4)
    assert logits.shape == (3, 10) and len(maps) == 2
    assert maps[0].shape == (3, 49) and torch.allclose(maps[0].sum(-1), torch.ones(3), atol=1e-5)
    assert (maps[0] >= 0).all()


def test_loss_is_zero_for_equal_maps_and_positive_otherwise():
    a = torch.softmax(torch.randn(4, 49), -1)
    b = torch.softmax(torch.randn(4, 49), -1)
    for kind in ("kl", "mse"):
        assert attention_loss(a, a, kind).abs().item() < 1e-6
        assert attention_loss(a, b, kind).item() > 1e-4
    with pytest.raises(ValueError, match="attention loss 'l1'"):
        attention_loss(a, b, "l1")


def test_gradient_reaches_the_attended_block_and_nothing_after_it():
    student = deit.create_model("deit_pico_patch4_28", num_classes=10).train()
    x = torch.randn(2, 3, 28, 28)
    rows = student_rows(student, x, blocks=(1,))[1]
    target = torch.softmax(torch.randn(2, 49), -1)
    attention_loss(patch_attention(rows, 1, per_head=False), target).backward()
    assert student.blocks[1].attn.qkv.weight.grad.abs().sum() > 0  # queries and keys make the map
    assert student.blocks[0].mlp.fc2.weight.grad.abs().sum() > 0  # ... from the tokens the earlier blocks made
    untouched = [student.blocks[1].attn.proj, student.blocks[1].mlp.fc1, student.blocks[2].attn.qkv, student.head]
    for module in untouched:
        assert module.weight.grad is None or module.weight.grad.abs().sum() == 0
    # the values do not shape the map: their rows of qkv get no gradient
    v_rows = student.blocks[1].attn.qkv.weight.grad[2 * 64 :]
    assert v_rows.abs().sum() == 0


def test_cnn_maps_resize_between_grids():
    features = torch.zeros(1, 8, 14, 14)
    features[0, :, 0:2, 0:2] = 1.0  # all activation in the top-left 2x2 cells
    fine = activation_map(features)
    assert fine.shape == (1, 196) and torch.allclose(fine.sum(), torch.tensor(1.0))
    coarse = resize_map(fine, 7)
    assert coarse.shape == (1, 49) and coarse[0, 0] == pytest.approx(1.0)  # the 2x2 block is one coarse cell
    blob = torch.softmax(torch.randn(2, 16), -1)
    up = resize_map(blob, 8)
    assert up.shape == (2, 64) and torch.allclose(up.sum(-1), torch.ones(2), atol=1e-5)
    assert torch.equal(resize_map(blob, 4), blob)
    with pytest.raises(ValueError, match="not a square grid"):
        resize_map(torch.ones(1, 10), 3)


@pytest.mark.parametrize("teacher_name, heads", [("deit_tiny_patch16_224", 3), ("deit_pico_distilled_patch4_28", 4)])
def test_vit_teacher_with_another_head_count_or_grid(teacher_name, heads):
    student = deit.create_model("deit_pico_distilled_patch4_28", num_classes=10).train()
    size = 224 if "224" in teacher_name else 28
    vit = deit.create_model(teacher_name, num_classes=10, num_heads=heads)
    teacher = Teacher(vit, teacher_name, 10)
    x = torch.randn(2, 3, size, size)
    _, maps = teacher_logits_and_maps(teacher, x, blocks=(-1,), grid=7, student_heads=student.num_heads)
    expected = (2, 49) if heads != student.num_heads else (2, 4, 49)  # per head only when the counts match
    assert maps[0].shape == expected
    assert torch.allclose(maps[0].sum(-1), torch.ones(expected[:-1]), atol=1e-5)


def test_attention_term_adds_to_every_distillation_type():
    student = deit.create_model("deit_pico_distilled_patch4_28", in_chans=1, num_classes=10).train()
    teacher = Teacher(SmallCNN(num_classes=10, in_chans=1), "small_cnn", 10)
    attention = AttentionDistillation.for_student(student, 2.0, (-1,), "kl")
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    outputs, maps = student(x, attn_blocks=[-1], attn_form="cls")
    for kind in ("none", "soft", "hard"):
        plain = DistillationLoss(torch.nn.CrossEntropyLoss(), teacher, kind, 0.5, 1.0)
        with_attention = DistillationLoss(torch.nn.CrossEntropyLoss(), teacher, kind, 0.5, 1.0, attention)
        parts = with_attention.parts(x, outputs, y, student_maps=maps)
        assert parts["attn_loss"] > 0
        expected = plain.parts(x, outputs, y)["loss"] + 2.0 * parts["attn_loss"]
        assert torch.allclose(parts["loss"], expected, atol=1e-6)
    with pytest.raises(ValueError, match="attention layer 4 does not exist"):
        AttentionDistillation.for_student(student, 1.0, (4,), "kl")
