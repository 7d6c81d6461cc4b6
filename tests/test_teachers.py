"""Teachers: built from local weights of every kind, always frozen, class count checked."""

import pytest
import timm
import torch

import deit
from deit.models.weights import deit_config
from deit.teachers import SmallCNN, Teacher, create_cnn, load_teacher


def save_run_checkpoint(path, model, config):
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 0, "deit_config": config}, path)


def test_cnn_trained_by_deit_train_loads_as_teacher(tmp_path):
    cnn = create_cnn("small_cnn", num_classes=10, in_chans=1)
    save_run_checkpoint(tmp_path / "checkpoint.pth", cnn, deit_config(cnn))
    teacher = load_teacher("ignored", tmp_path, num_classes=10, in_chans=1)  # the run folder
    x = torch.randn(2, 1, 28, 28)
    cnn.eval()
    assert torch.equal(teacher(x), cnn(x))
    assert teacher.name == "small_cnn"


def test_timm_state_dict_of_a_named_architecture(tmp_path):
    reference = timm.create_model("resnet18", num_classes=10).eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    teacher = load_teacher("resnet18", tmp_path / "resnet18.pth", num_classes=10, in_chans=3)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(teacher(x), reference(x))


def test_deit_teacher(tmp_path):
    vit = deit.create_model("deit_pico_patch4_28", num_classes=10, in_chans=1).eval()
    deit.save_weights(vit, tmp_path / "vit")
    teacher = load_teacher("ignored", tmp_path / "vit", num_classes=10, in_chans=1)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(teacher(x), vit(x))


def test_teacher_stays_frozen_in_eval_mode():
    teacher = Teacher(SmallCNN(), "small_cnn", 10)
    teacher.train()
    assert not teacher.training and not teacher.model.training
    out = teacher(torch.randn(2, 1, 28, 28))
    assert not out.requires_grad
    assert not any(p.requires_grad for p in teacher.parameters())


def test_class_count_mismatch_and_missing_weights_are_clear(tmp_path):
    torch.save(timm.create_model("resnet18", num_classes=1000).state_dict(), tmp_path / "imagenet.pth")
    with pytest.raises(ValueError, match="predicts 1000 classes but the data has 10"):
        load_teacher("resnet18", tmp_path / "imagenet.pth", num_classes=10, in_chans=3)
    with pytest.raises(ValueError, match="needs the teacher's weights"):
        load_teacher("resnet18", None, num_classes=10, in_chans=3)
    with pytest.raises(ValueError, match="does not fit resnet34"):
        load_teacher("resnet34", tmp_path / "imagenet.pth", num_classes=1000, in_chans=3)
    with pytest.raises(ValueError, match="unknown architecture 'resnet_huge'"):
        create_cnn("resnet_huge", num_classes=10, in_chans=3)


def test_teacher_sees_the_views_at_the_size_it_was_trained_at(tmp_path):
    # a CNN trained on the 8 px digits, distilling into a 28 px student: the student's views are resized back to
    # 8 px for it. Fed the 28 px views as they come, the same network is near chance (a distilled student then
    # learns a near-constant teacher label).
    import torch.nn.functional as F

    from deit.cli import main
    from deit.data import build_dataset

    assert (
        main(
            [
                "train",
                "--model",
                "small_cnn",
                "--data-set",
                "digits",
                "--num_workers",
                "0",
                "--batch-size",
                "32",
                "--epochs",
                "4",
                "--lr",
                "0.05",
                "--warmup-epochs",
                "0.5",
                "--no-model-ema",
                "--output_dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    teacher = load_teacher("ignored", tmp_path, num_classes=10, in_chans=1)
    assert teacher.input_size == 8
    test, info = build_dataset("digits", None, False)
    images = (torch.from_numpy(test.images).float().unsqueeze(1) / 255 - info.mean[0]) / info.std[0]
    targets = torch.tensor(test.targets)
    views = F.interpolate(images, size=(28, 28), mode="bicubic", align_corners=False)  # as the student takes them

    def accuracy(logits):
        return (logits.argmax(1) == targets).float().mean().item()

    native, resized, raw = accuracy(teacher(images)), accuracy(teacher(views)), accuracy(teacher.model(views))
    assert native > 0.8
    assert resized > native - 0.08 and raw < resized - 0.3
    assert torch.equal(teacher(images), teacher.model(images))  # at its own size: untouched


def test_vit_teacher_of_another_size_takes_the_students_views(tmp_path):
    vit = deit.create_model("deit_pico_patch4_28", num_classes=10, in_chans=1).eval()
    deit.save_weights(vit, tmp_path / "vit")
    teacher = load_teacher("ignored", tmp_path / "vit", num_classes=10, in_chans=1)
    x = torch.randn(2, 1, 32, 32)
    expected = vit(torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", antialias=True))
    assert teacher.input_size == 28 and torch.allclose(teacher(x), expected)
