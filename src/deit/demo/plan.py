"""The demo's study: the teacher and student settings, the methods compared, and the runs (`Job`) for each count
of labels per class, in the order a free process takes them up."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..config import TrainConfig, merge
from ..data.datasets import first_per_class
from ..files import slug
from ..models.registry import MODELS, distilled_twins

TEACHER_MODEL = "small_cnn"


STUDENT = "deit_pico_patch7_28"


DISTILLED_STUDENT = "deit_pico_distilled_patch7_28"


LABELS = (10, 100, None)
"""Labelled images per class in the study; None: every training image keeps its label."""


QUICK_LABELS = (10, None)


VIEWS = {
    "aug.cutmix": 0.0,
    "aug.color_jitter": 0.0,
    "aug.eval_crop_ratio": 1.0,
}
"""What every data set's teacher and students share beside the settings below, built-in or folder: no CutMix (an
unlabelled image's target is the teacher's class on it, whole), no colour jitter (grayscale images), and the
whole image at evaluation (small images, close to the students' 28 px). Only mirroring follows the data set: on
where a mirror image keeps its class (Fashion-MNIST, a folder by default), off for digits."""


TEACHER = {  # trained at the students' size, on the views they will see (digits: 8 px upscaled; folders: 28 px)
    **VIEWS,
    "model.model": TEACHER_MODEL,
    "model.input_size": MODELS[STUDENT].img_size,
    "run.epochs": 16,
    "run.batch_size": 64,
    "optim.lr": 0.024,
    "optim.warmup_epochs": 0.3,
    "optim.model_ema": False,
    "aug.aa": "rand-m5-mstd0.5-inc1",
    "aug.crop_scale": 0.6,
    "aug.reprob": 0.0,
    "aug.mixup": 0.0,
}


TEACHER_EPOCH_IMAGES = 2400
"""A teacher's epoch passes over its labelled images often enough to hold at least this many views."""


STUDENTS = {
    **VIEWS,
    "run.epochs": 18,
    "run.batch_size": 32,
    "optim.lr": 0.032,
    "optim.warmup_epochs": 1.0,
    "optim.model_ema": False,
    "aug.aa": None,
    "aug.crop_scale": 0.9,  # 0.75: every student lower with every label (fashion-mnist, docs/few-labels.md)
    "aug.reprob": 0.1,
    "aug.mixup": 0.0,
    "model.drop_path": 0.0,
}


FEW_LABELS = 0.1
"""Where fewer than this share of the training images keep their label, the students (and the teacher's cache of
their views) train `FEW_LABEL_EPOCHS`: nearly all a distilled student learns then comes from the teacher on the
unlabelled images, and it keeps gaining past 18 epochs and past 36 (Fashion-MNIST, 3 seeds; docs/few-labels.md).
The student alone takes the same steps."""


FEW_LABEL_EPOCHS = 72


@dataclass(frozen=True)
class Students:
    """The study's students: a DeiT alone, its twin with a distillation token, and their epochs at every count of
    labels (None: `STUDENTS`' epochs, `FEW_LABEL_EPOCHS` where few images keep a label)."""

    alone: str = STUDENT
    distilled: str = DISTILLED_STUDENT
    epochs: int | None = None

    @classmethod
    def of(cls, model: str | None = None, epochs: int | None = None) -> Students:
        """`model`: either twin's name (default: the demo's `STUDENT`)."""
        alone, distilled = distilled_twins(model or STUDENT)
        return cls(alone, distilled, epochs)

    def model(self, method_model: str) -> str:
        """The model of a method of `METHODS`, which names the demo's default students."""
        return self.distilled if method_model == DISTILLED_STUDENT else self.alone

    def schedule(self, labelled: int, images: int) -> int:
        if self.epochs is not None:
            return self.epochs
        return FEW_LABEL_EPOCHS if labelled < FEW_LABELS * images else STUDENTS["run.epochs"]


ATTENTION_WEIGHT = 1.0


SOFT_TAU, SOFT_ALPHA = 3.0, 0.9
"""The soft + attention students' temperature (the paper's) and alpha. The official soft term is divided by the
number of logits (batch x classes), so on ten classes the paper's alpha 0.1 leaves the teacher's term a small share
of the loss. At 0.9 (tau 3) the mean of 3 seeds rose above hard + attention's at five of the six points of the two
built-in sets' studies, and fell 0.4 at the sixth (mnist5k, 10 labels; docs/few-labels.md)."""


# (label, model, settings): the rows of the Table-3 report, in the paper's order, then ours
METHODS = [
    ("none", STUDENT, {}),
    (
        "soft (tau 3, alpha 0.1)",
        DISTILLED_STUDENT,
        {"distill.distillation_type": "soft", "distill.distillation_tau": 3.0, "distill.distillation_alpha": 0.1},
    ),
    (
        "hard, distillation token",
        DISTILLED_STUDENT,
        {"distill.distillation_type": "hard", "distill.distillation_alpha": 0.5},
    ),
    (
        f"soft + attention (tau {SOFT_TAU:g}, alpha {SOFT_ALPHA:g}, beta {ATTENTION_WEIGHT:g})",
        DISTILLED_STUDENT,
        {
            "distill.distillation_type": "soft",
            "distill.distillation_tau": SOFT_TAU,
            "distill.distillation_alpha": SOFT_ALPHA,
            "distill.attn_distillation_weight": ATTENTION_WEIGHT,
        },
    ),
]


STUDY = {"none": METHODS[0], "hard": METHODS[2], "soft + attention": METHODS[3]}
"""The methods at every label count, by their name on the curve."""


STUDY_ORDER = ("teacher", *STUDY)


QUICK = {"run.epochs": 1}


CACHE = "teacher_outputs"
"""The teacher cache's folder in its job's."""


@dataclass
class Job:
    """One process of the demo: a training run, or (`cache_only`) the teacher's pass over the students' views."""

    name: str  # its folder in the demo's
    cfg: TrainConfig
    row: dict = field(default_factory=dict)  # what the report says of it
    after: tuple[str, ...] = ()  # the jobs whose outputs it reads
    cache_only: bool = False
    work: float = 0.0  # roughly its share of the demo's time: the images it passes, weighted by `WORK`


WORK = {"train": 1.0, "distilled": 1.4, "cache": 0.05}
"""Time per image against the DeiT alone's: a distilled student also reads the teacher's outputs and computes the
attention term, a cache runs the small CNN forward only (mnist5k, one core: about 2,100, 1,500 and 30,000 img/s)."""


def longest_chain_first(jobs: list[Job]) -> list[Job]:
    """The jobs by the work of the longest chain each starts (itself, the jobs that read it, theirs), longest
    first: a free lane takes up the first job it can, so the long few-label runs and the teacher and cache they
    wait on start first and the short runs fill both lanes at the end. Each job comes after those it reads."""
    readers = {job.name: [j for j in jobs if job.name in j.after] for job in jobs}
    chain: dict[str, float] = {}

    def length(job: Job) -> float:
        if job.name not in chain:
            chain[job.name] = job.work + max((length(r) for r in readers[job.name]), default=0.0)
        return chain[job.name]

    return sorted(jobs, key=lambda job: -length(job))


def label_counts(targets: list[int], counts: tuple) -> tuple[list, int]:
    """The counts of labels per class the data can hold, and its smallest class's images: a count at or above those
    would keep every label of that class, which the "all" runs already show."""
    smallest = min(Counter(targets).values())
    return [n for n in counts if n is None or n < smallest], smallest


def study_jobs(
    out: Path, common: dict, targets: list[int], counts: tuple, students: Students = Students()
) -> list[Job]:
    """The runs of the study, for each count of labels per class (None: all): the teacher on the labelled images,
    its cache over the students' views, the student alone on the labelled images (passed over as many times as the
    distilled students' epochs need: the same steps), the distilled students on all images, the unlabelled rest
    taught by the teacher alone. In the order a free process takes them up."""
    counts = label_counts(targets, counts)[0]
    size = {"model.input_size": MODELS[students.alone].img_size}  # the teacher sees the students' views
    jobs = []
    for n in counts:
        tag = "all" if n is None else str(n)
        labelled = len(targets) if n is None else len(first_per_class(targets, n))
        few = {} if n is None else {"data.labels_per_class": n}
        epochs = students.schedule(labelled, len(targets))
        schedule = {"run.epochs": epochs}
        unlabelled = {} if n is None else {**few, "data.unlabelled": True}
        teacher, cache = f"teacher_{tag}", f"cache_{tag}"
        repeat = max(1, math.ceil(TEACHER_EPOCH_IMAGES / labelled))
        jobs.append(
            Job(
                teacher,
                job_config(out, teacher, {**TEACHER, **size, **few, "data.repeat": repeat}, common),
                {"method": "teacher", "model": TEACHER_MODEL, "labels": n, "curve": "teacher"},
                work=WORK["train"] * TEACHER["run.epochs"] * labelled * repeat,
            )
        )
        # one pass of the teacher serves every distilled student: the soft + attention settings ask for all
        # that any of them reads, logits and maps
        reads = {"distill.teacher_path": str(out / teacher), "distill.teacher_cache": str(out / cache / CACHE)}
        jobs.append(
            Job(
                cache,
                job_config(
                    out,
                    cache,
                    {
                        **STUDENTS,
                        "model.model": students.distilled,
                        **METHODS[-1][2],
                        **reads,
                        **unlabelled,
                        **schedule,
                    },
                    common,
                ),
                after=(teacher,),
                cache_only=True,
                work=WORK["cache"] * epochs * len(targets),
            )
        )
        for label, method_model, settings in METHODS:
            if n is not None and (label, method_model, settings) not in STUDY.values():
                continue
            name = f"{run_name(label)}_{tag}"
            model = students.model(method_model)
            row = {
                "method": label,
                "model": model,
                "teacher": TEACHER_MODEL if settings else None,
                "labels": n,
                "curve": next((k for k, (m, _, _) in STUDY.items() if m == label), None),
            }
            if settings:
                cfg = job_config(
                    out,
                    name,
                    {**STUDENTS, "model.model": model, **settings, **reads, **unlabelled, **schedule},
                    common,
                )
                work = WORK["distilled"] * epochs * len(targets)
                jobs.append(Job(name, cfg, row, after=(cache,), work=work))
            else:
                repeat = max(1, round(len(targets) / labelled))
                cfg = job_config(
                    out, name, {**STUDENTS, "model.model": model, **few, **schedule, "data.repeat": repeat}, common
                )
                jobs.append(Job(name, cfg, row, work=WORK["train"] * epochs * labelled * repeat))
    return longest_chain_first(jobs)


def vit_teacher_job(out: Path, common: dict, targets: list[int], students: Students = Students()) -> Job:
    """The paper's other teacher: a transformer (the student trained without one), run online."""
    settings = {
        **STUDENTS,
        "model.model": students.distilled,
        "distill.distillation_type": "hard",
        "distill.teacher_path": str(out / "none_all"),
        "run.epochs": students.schedule(len(targets), len(targets)),
    }
    return Job(
        "hard_vit_teacher_all",
        job_config(out, "hard_vit_teacher_all", settings, common),
        {"method": "hard, ViT teacher", "model": students.distilled, "teacher": students.alone, "labels": None},
        after=("none_all",),
    )


def table3_jobs(jobs: list[Job]) -> list[Job]:
    """The runs on every label, in Table 3's order of methods."""
    order = [label for label, _, _ in METHODS] + ["hard, ViT teacher"]
    return sorted(
        (j for j in jobs if j.row.get("labels", 0) is None and j.row["method"] in order),
        key=lambda j: order.index(j.row["method"]),
    )


def job_config(out: Path, name: str, settings: dict, common: dict) -> TrainConfig:
    values, explicit = merge({}, {**settings, **common, "run.output_dir": str(out / name)})
    return TrainConfig.from_dict(values, explicit)


def short_label(label: str) -> str:
    """A method without its settings: "soft + attention (tau 3, alpha 0.9, beta 1)" -> "soft + attention"."""
    return label.split(" (")[0]


def run_name(label: str) -> str:
    """The run folder of a method: "soft + attention (tau 3, alpha 0.9, beta 1)" -> "soft_attention"."""
    return slug(short_label(label), "_")
