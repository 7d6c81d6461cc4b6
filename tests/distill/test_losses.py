"""The distillation losses against the paper's formulas, computed directly on fixed tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from deit.distill import DistillationLoss

B, K = 4, 5


class RecordingTeacher(torch.nn.Module):
    """Returns fixed logits and remembers what it was shown."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.seen = logits, None

    def forward(self, x):
        self.seen = x
        return self.logits


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(1)
    return dict(
        inputs=torch.randn(B, 3, 8, 8, generator=g),
        cls=torch.randn(B, K, generator=g, requires_grad=True),
        dist=torch.randn(B, K, generator=g, requires_grad=True),
        teacher=torch.randn(B, K, generator=g) * 3,
        labels=torch.tensor([0, 1, 2, 3]),
    )


def cross_entropy(logits, labels):
    return -sum(torch.log_softmax(logits[i], 0)[labels[i]] for i in range(len(labels))) / len(labels)


def test_none_is_the_base_loss_of_the_class_head(tensors):
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), None, "none", 0.5, 1.0)
    parts = loss.parts(tensors["inputs"], (tensors["cls"], tensors["dist"]), tensors["labels"])
    assert torch.allclose(parts["loss"], cross_entropy(tensors["cls"], tensors["labels"]))
    assert set(parts) == {"loss", "base_loss"}


def test_soft_is_kl_at_temperature_times_tau_squared_over_numel(tensors):
    tau, alpha = 3.0, 0.1
    teacher = RecordingTeacher(tensors["teacher"])
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), teacher, "soft", alpha, tau)
    parts = loss.parts(tensors["inputs"], (tensors["cls"], tensors["dist"]), tensors["labels"])
    # KL(p_teacher || p_student) at temperature tau, summed over batch and classes, * tau^2 / (B * K)
    p_t = torch.softmax(tensors["teacher"] / tau, 1)
    log_p_s = torch.log_softmax(tensors["dist"] / tau, 1)
    kl = sum(p_t[i, k] * (math.log(p_t[i, k]) - log_p_s[i, k]) for i in range(B) for k in range(K))
    soft = kl * tau**2 / (B * K)
    base = cross_entropy(tensors["cls"], tensors["labels"])
    assert torch.allclose(parts["distill_loss"], soft, atol=1e-6)
    assert torch.allclose(parts["base_loss"], base, atol=1e-6)
    assert torch.allclose(parts["loss"], (1 - alpha) * base + alpha * soft, atol=1e-6)
    assert teacher.seen is tensors["inputs"]  # the teacher sees the student's (mixed) images
    assert torch.allclose(loss(tensors["inputs"], (tensors["cls"], tensors["dist"]), tensors["labels"]), parts["loss"])


def test_hard_is_cross_entropy_against_the_teacher_argmax(tensors):
    alpha = 0.5
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), RecordingTeacher(tensors["teacher"]), "hard", alpha, 1.0)
    parts = loss.parts(tensors["inputs"], (tensors["cls"], tensors["dist"]), tensors["labels"])
    teacher_labels = tensors["teacher"].argmax(1)
    assert not torch.equal(teacher_labels, tensors["labels"])  # the two signals differ in this example
    expected = (1 - alpha) * cross_entropy(tensors["cls"], tensors["labels"]) + alpha * cross_entropy(
        tensors["dist"], teacher_labels
    )
    assert torch.allclose(parts["loss"], expected, atol=1e-6)


def test_class_head_learns_from_labels_and_distillation_head_from_teacher(tensors):
    alpha = 0.5
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), RecordingTeacher(tensors["teacher"]), "hard", alpha, 1.0)
    loss(tensors["inputs"], (tensors["cls"], tensors["dist"]), tensors["labels"]).backward()
    # d CE / d logits = (softmax - one_hot) / B
    want_cls = (1 - alpha) * (torch.softmax(tensors["cls"], 1) - F.one_hot(tensors["labels"], K)) / B
    want_dist = alpha * (torch.softmax(tensors["dist"], 1) - F.one_hot(tensors["teacher"].argmax(1), K)) / B
    assert torch.allclose(tensors["cls"].grad, want_cls, atol=1e-6)
    assert torch.allclose(tensors["dist"].grad, want_dist, atol=1e-6)


def test_student_without_distillation_token_is_distilled_through_its_class_head(tensors):
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), RecordingTeacher(tensors["teacher"]), "hard", 0.5, 1.0)
    parts = loss.parts(tensors["inputs"], tensors["cls"], tensors["labels"])
    expected = 0.5 * cross_entropy(tensors["cls"], tensors["labels"]) + 0.5 * cross_entropy(
        tensors["cls"], tensors["teacher"].argmax(1)
    )
    assert torch.allclose(parts["loss"], expected, atol=1e-6)


def test_given_teacher_logits_are_used_instead_of_running_the_teacher(tensors):
    teacher = RecordingTeacher(torch.zeros(B, K))
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), teacher, "hard", 0.5, 1.0)
    given = loss.parts(tensors["inputs"], (tensors["cls"], tensors["dist"]), tensors["labels"], tensors["teacher"])
    assert teacher.seen is None
    direct = DistillationLoss(torch.nn.CrossEntropyLoss(), RecordingTeacher(tensors["teacher"]), "hard", 0.5, 1.0)
    assert torch.allclose(
        given["loss"], direct(tensors["inputs"], (tensors["cls"], tensors["dist"]), tensors["labels"])
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="distillation_type='medium'"):
        DistillationLoss(torch.nn.CrossEntropyLoss(), None, "medium", 0.5, 1.0)
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationLoss(torch.nn.CrossEntropyLoss(), None, "hard", 0.5, 1.0)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_an_image_without_a_label_takes_the_teachers_decision(tensors, kind):
    """`labelled` mask (--unlabelled): the class head's target is the label where there is one, else the teacher's
    argmax; both losses average over every image of the batch."""
    alpha, tau = 0.5, 2.0
    labelled = torch.tensor([True, False, True, False])
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), RecordingTeacher(tensors["teacher"]), kind, alpha, tau)
    labels = tensors["labels"]
    parts = loss.parts(tensors["inputs"], (tensors["cls"], tensors["dist"]), labels, labelled=labelled)
    targets = torch.where(labelled, labels, tensors["teacher"].argmax(1))
    assert not torch.equal(targets, labels)  # the teacher disagrees with a hidden label here: the test can fail
    base = cross_entropy(tensors["cls"], targets)
    every = loss.parts(tensors["inputs"], (tensors["cls"], tensors["dist"]), labels)
    assert torch.allclose(parts["base_loss"], base, atol=1e-6)
    assert torch.allclose(parts["distill_loss"], every["distill_loss"])  # all four images
    assert torch.allclose(parts["loss"], (1 - alpha) * base + alpha * every["distill_loss"], atol=1e-6)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_one_labelled_image_weighs_what_it_weighs_in_a_labelled_batch(kind):
    """A batch of 32 with one labelled image: that image's class-head gradient is the one it gets in a batch where
    all 32 are labelled (softmax - one-hot, over 32), not 32 times more; the same for the distillation head."""
    g = torch.Generator().manual_seed(3)
    n, k = 32, 10
    cls, dist, teacher = (torch.randn(n, k, generator=g) for _ in range(3))
    labels = torch.randint(0, k, (n,), generator=g)
    labelled = torch.zeros(n, dtype=torch.bool)
    labelled[7] = True
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), RecordingTeacher(teacher), kind, 0.5, 1.0)

    def grads(mask):
        c, d = cls.clone().requires_grad_(), dist.clone().requires_grad_()
        loss.parts(torch.zeros(n, 1, 4, 4), (c, d), labels, labelled=mask)["loss"].backward()
        return c.grad, d.grad

    one, full = grads(labelled), grads(None)
    expected = 0.5 * (cls[7].softmax(0) - F.one_hot(labels[7], k)) / n  # (1 - alpha) * d CE_mean / d logits
    assert torch.allclose(one[0][7], expected, atol=1e-7) and torch.allclose(full[0][7], expected, atol=1e-7)
    assert torch.allclose(one[1], full[1])  # the distillation head does not see labels at all


def test_unlabelled_mixed_images_take_the_teachers_class_as_a_one_hot_row(tensors):
    """Under Mixup the labels are class probabilities: a (mixed) image without a label gets the teacher's class."""
    soft_labels = F.one_hot(tensors["labels"], K).float() * 0.7 + 0.3 / K
    labelled = torch.tensor([False, True, True, False])
    loss = DistillationLoss(SoftTarget(), RecordingTeacher(tensors["teacher"]), "hard", 0.5, 1.0)
    parts = loss.parts(tensors["inputs"], (tensors["cls"], tensors["dist"]), soft_labels, labelled=labelled)
    targets = torch.where(labelled[:, None], soft_labels, F.one_hot(tensors["teacher"].argmax(1), K).float())
    expected = -(targets * tensors["cls"].log_softmax(1)).sum(1).mean()
    assert torch.allclose(parts["base_loss"], expected, atol=1e-6)


class SoftTarget(torch.nn.Module):
    def forward(self, logits, target):
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def test_a_batch_without_labels_learns_from_the_teacher_alone(tensors):
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), RecordingTeacher(tensors["teacher"]), "hard", 0.5, 1.0)
    parts = loss.parts(
        tensors["inputs"],
        (tensors["cls"], tensors["dist"]),
        tensors["labels"],
        labelled=torch.zeros(B, dtype=torch.bool),
    )
    decided = tensors["teacher"].argmax(1)
    assert torch.allclose(parts["base_loss"], cross_entropy(tensors["cls"], decided))
    assert torch.allclose(
        parts["loss"], 0.5 * cross_entropy(tensors["cls"], decided) + 0.5 * cross_entropy(tensors["dist"], decided)
    )
