"""Teachers: built from local weights of every kind, always frozen, class count checked."""

import pytest
import timm
import torch
from conftest import FAST, read_log
from short_runs import cnn_on_8px_digits
from timm.models import register_model
from torch import nn

import deit
from deit.cli import main
from deit.models.weights import deit_config
from deit.teachers import SmallCNN, Teacher, create_cnn, load_teacher


class TensorWidthsCNN(nn.Module):
    """A CNN whose constructor computes its widths with tensors, as timm 1.0.29's RegNet does (`torch.unique`)."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, **kwargs):
        super().__init__()
        widths = torch.unique(torch.tensor([8.0, 8.0, 16.0]).round().int()).tolist()
        self.stem = nn.Conv2d(in_chans, widths[0], 3, padding=1)
        self.body = nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1)
        self.fc = nn.Linear(widths[1], num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self.stem(x).relu()).relu().mean(dim=(2, 3)))


@register_model
def tensor_widths_cnn_for_tests(pretrained: bool = False, **kwargs) -> nn.Module:
    return TensorWidthsCNN(**kwargs)


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


@pytest.mark.smoke
def test_an_architecture_that_computes_with_tensors_as_it_is_built(tmp_path):
    """Its state dict loads as a teacher (one built on the meta device to read the head's size failed:
    'aten::_unique2: attempted to run this operator with Meta tensors'), and a wrong class count is still named."""
    reference = TensorWidthsCNN(num_classes=10, in_chans=1).eval()
    torch.save(reference.state_dict(), tmp_path / "cnn.pth")
    teacher = load_teacher("tensor_widths_cnn_for_tests", tmp_path / "cnn.pth", num_classes=10, in_chans=1)
    x = torch.randn(2, 1, 28, 28)
    # a CNN runs channels-last (create_cnn): the reference too, for the same sums to the bit
    assert torch.equal(teacher(x), reference.to(memory_format=torch.channels_last)(x))
    with pytest.raises(ValueError, match="predicts 10 classes but the data has 7"):
        load_teacher("tensor_widths_cnn_for_tests", tmp_path / "cnn.pth", num_classes=7, in_chans=1)


@pytest.mark.smoke
def test_the_papers_teacher_regnety_160_from_a_timm_state_dict_distils_online_and_cached(tmp_path):
    """`deit train --teacher-model regnety_160 --teacher-path STATE_DICT`, as the paper distils DeiT, on every
    stack CI runs (timm 1.0.29 builds RegNet's widths with tensors); with the teacher online and from a cache."""
    torch.save(timm.create_model("regnety_160", num_classes=10, in_chans=1).state_dict(), tmp_path / "regnety.pth")
    common = ["--model", "deit_pico_distilled_patch4_28", *FAST, "--labels-per-class", "8", "--epochs", "1"]
    common += ["--distillation-type", "hard", "--teacher-model", "regnety_160"]
    common += ["--teacher-path", str(tmp_path / "regnety.pth")]
    assert main(["train", *common, "--output_dir", str(tmp_path / "online")]) == 0
    cache = ["--teacher-cache", str(tmp_path / "cache")]
    assert main(["train", *common, *cache, "--output_dir", str(tmp_path / "cached")]) == 0
    online, cached = read_log(tmp_path / "online")[0], read_log(tmp_path / "cached")[0]
    assert online["distill_loss"] > 0 and cached["distill_loss"] == pytest.approx(online["distill_loss"], rel=1e-5)


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
    """A CNN trained on the 8 px digits, distilling into a 28 px student: the student's views are resized back to
    8 px for it. Fed the 28 px views as they come, the same network is near chance (a distilled student then
    learns a near-constant teacher label). Over 10 seeds (benchmarks/seed_spread.py): native 0.974 +- 0.008,
    resized minus native -0.012 +- 0.004, raw minus resized -0.85 +- 0.03; each bound over 5 standard deviations
    away."""
    top1 = cnn_on_8px_digits(tmp_path)
    assert top1["native"] > 0.8
    assert top1["resized"] > top1["native"] - 0.08 and top1["raw"] < top1["resized"] - 0.3


def test_vit_teacher_of_another_size_takes_the_students_views(tmp_path):
    vit = deit.create_model("deit_pico_patch4_28", num_classes=10, in_chans=1).eval()
    deit.save_weights(vit, tmp_path / "vit")
    teacher = load_teacher("ignored", tmp_path / "vit", num_classes=10, in_chans=1)
    x = torch.randn(2, 1, 32, 32)
    expected = vit(torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", antialias=True))
    assert teacher.input_size == 28 and torch.allclose(teacher(x), expected)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_cnns_keep_channels_last_weights_as_built_and_as_loaded(tmp_path, name):
    """oneDNN and cuDNN convolve channels-last when the weights are (docs/distillation.md), trained or teaching."""
    in_chans = 1 if name == "small_cnn" else 3
    cnn = create_cnn(name, num_classes=10, in_chans=in_chans)
    convs = [m.weight for m in cnn.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(w.is_contiguous() for w in convs)
    save_run_checkpoint(tmp_path / "checkpoint.pth", cnn, deit_config(cnn))
    teacher = load_teacher("ignored", tmp_path, num_classes=10, in_chans=in_chans)
    loaded = [m.weight for m in teacher.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[1] > 1]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in loaded)
