"""`deit demo`: what distillation is for, measured in minutes on a laptop CPU: few labels, a CNN teacher, and
the unlabelled rest of the images.

For each count of labelled images per class (10, 100 and all 400 of the 4,000 training digits), a small CNN
teacher is trained on the labelled images; then the same small DeiT is trained on them alone (as many steps as
the distilled ones, the labelled images passed over more often), and distilled from the teacher on the labelled
plus the unlabelled images: hard distillation through the distillation token, and hard + attention. With all
labels, soft distillation joins in: the paper's Table 3. The report gives each model's top-1 and training time,
the curve of top-1 against labels, both heads of each distilled student, and where each model looks.

Every model trains in a process of its own, side by side, one per core; the teacher of each label count runs once
over the students' views (a teacher cache) and its distilled students read it; the digits are augmented a batch
at a time (`--batch-aug`). The seed is fixed: the same seed gives the same tables.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import read_log
from .config import TrainConfig, merge
from .data.datasets import BUILTINS, build_dataset, canonical_name, first_per_class
from .distributed import cpu_name
from .files import LOCK, FolderLock, slug, write_text
from .models.registry import MODELS
from .stopping import sigterm_as_interrupt
from .train import make_teacher_cache, run

MARKER = ".deit-demo"
DEMO_FILES = ("report.md", "results.json", "curve.png", "curves.png", "attention.png", MARKER)
TEACHER_MODEL = "small_cnn"
STUDENT = "deit_pico_patch7_28"
DISTILLED_STUDENT = "deit_pico_distilled_patch7_28"
LABELS = (10, 100, None)
"""Labelled images per class in the study; None: every training image keeps its label."""
QUICK_LABELS = (10, None)

TEACHER = {  # trained at the students' size, on the views they will see (digits: 8 px upscaled; folders: 28 px)
    "model.model": TEACHER_MODEL,
    "model.input_size": MODELS[STUDENT].img_size,
    "run.epochs": 6,
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
    "run.epochs": 13,
    "run.batch_size": 32,
    "optim.lr": 0.032,
    "optim.warmup_epochs": 1.0,
    "optim.model_ema": False,
    "aug.aa": None,
    "aug.crop_scale": 0.75,
    "aug.reprob": 0.1,
    "aug.mixup": 0.0,
    "model.drop_path": 0.0,
}
ATTENTION_WEIGHT = 1.0
# (label, model, settings): the rows of the Table-3 report, in the paper's order
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
        f"hard + attention (beta {ATTENTION_WEIGHT:g})",
        DISTILLED_STUDENT,
        {
            "distill.distillation_type": "hard",
            "distill.distillation_alpha": 0.5,
            "distill.attn_distillation_weight": ATTENTION_WEIGHT,
        },
    ),
]
STUDY = {"none": METHODS[0], "hard": METHODS[2], "hard + attention": METHODS[3]}
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


def run_demo(
    *,
    data_set: str = "mnist5k",
    data_path: str | None = None,
    output_dir: str | Path = "demo_output",
    quick: bool = False,
    seed: int = 0,
    vit_teacher: bool = False,
    num_workers: int = 2,
    lanes: int | None = None,
) -> dict:
    """Train the teachers and the students; write report.md, results.json, curve.png, curves.png and
    attention.png.

    `lanes`: processes at once (default: one per CPU core, at most four). The demo owns its folder while it runs (a
    lock); stopped (Ctrl-C, SIGTERM), it stops its processes too.
    """
    out = Path(output_dir)
    with FolderLock(out, "deit demo", owns=DEMO_FILES):
        _prepare(out)
        return _demo(
            out,
            data_set=data_set,
            data_path=data_path,
            quick=quick,
            seed=seed,
            vit_teacher=vit_teacher,
            num_workers=num_workers,
            lanes=lanes,
        )


def _demo(
    out: Path,
    *,
    data_set: str,
    data_path: str | None,
    quick: bool,
    seed: int,
    vit_teacher: bool,
    num_workers: int,
    lanes: int | None,
) -> dict:
    start = time.perf_counter()
    in_memory = canonical_name(data_set) in BUILTINS  # augmented a batch at a time, without loader processes
    common = {
        "data.data_set": data_set,
        "data.data_path": data_path,
        "run.seed": seed,
        "aug.batch_aug": in_memory,
        "data.num_workers": num_workers,
        **(QUICK if quick else {}),
    }
    train_set, info = build_dataset(data_set, data_path, True)
    jobs = study_jobs(out, common, train_set.targets, QUICK_LABELS if quick else LABELS)
    if vit_teacher:
        jobs.append(_vit_teacher_job(out, common))
    print(
        f"deit demo: {len(jobs)} runs on {canonical_name(data_set)} ({len(train_set)} training images), "
        "side by side: teachers, their cached outputs, then the students"
    )
    done = train_side_by_side(jobs, out, lanes=lanes)
    per_class = round(len(train_set) / info.num_classes)  # "all": the curve's x for every label kept
    results = _results(out, jobs, done, per_class, data_set=data_set, data_path=data_path, seed=seed, quick=quick)
    _pictures(out, results, jobs, done, data_set, data_path)
    results["seconds"] = round(time.perf_counter() - start, 1)
    write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_text(out / "report.md", report(results))
    print(f"\n{curve_table(results)}\n\n{report_table(results)}\nreport, results and pictures in {out}/")
    return results


def _vit_teacher_job(out: Path, common: dict) -> Job:
    """The paper's other teacher: a transformer (the student trained without one), run online."""
    settings = {
        **STUDENTS,
        "model.model": DISTILLED_STUDENT,
        "distill.distillation_type": "hard",
        "distill.teacher_path": str(out / "none_all"),
    }
    return Job(
        "hard_vit_teacher_all",
        _config(out, "hard_vit_teacher_all", settings, common),
        {"method": "hard, ViT teacher", "model": DISTILLED_STUDENT, "teacher": STUDENT, "labels": None},
        after=("none_all",),
    )


def _table3(jobs: list[Job]) -> list[Job]:
    """The runs on every label, in Table 3's order of methods."""
    order = [label for label, _, _ in METHODS] + ["hard, ViT teacher"]
    return sorted(
        (j for j in jobs if j.row.get("labels", 0) is None and j.row["method"] in order),
        key=lambda j: order.index(j.row["method"]),
    )


def _curve_and_heads(out: Path, jobs: list[Job], done: dict, per_class: int, test) -> tuple[list, list]:
    """Each study run's top-1 at its count of labels; each distilled student's heads read alone."""
    curve, heads = [], []
    for job in jobs:
        method = job.row.get("curve")  # the study's runs (soft and the ViT teacher are Table-3 rows alone)
        if method is None:
            continue
        n = job.row["labels"] or per_class
        result = done[job.name]
        point = {"labels_per_class": n, "method": method}
        curve.append({**point, "acc1": result["acc1"], "train_seconds": result["train_seconds"]})
        if job.row["model"] == DISTILLED_STUDENT:
            heads.append({**point, **head_accuracy(out / job.name, test)})

    def order(p):
        return p["labels_per_class"], STUDY_ORDER.index(p["method"])

    return sorted(curve, key=order), sorted(heads, key=order)


def _results(
    out: Path, jobs: list[Job], done: dict, per_class: int, *, data_set: str, data_path, seed: int, quick: bool
) -> dict:
    """results.json: the teacher, Table 3's students, the curve and the heads."""
    test = test_batches(data_set, data_path, MODELS[DISTILLED_STUDENT].img_size)
    curve, heads = _curve_and_heads(out, jobs, done, per_class, test)
    teacher = done["teacher_all"]
    return {
        "data_set": canonical_name(data_set),
        "seed": seed,
        "quick": quick,
        "machine": machine(),
        "teacher": {
            "model": TEACHER_MODEL,
            "acc1": teacher["acc1"],
            "train_seconds": teacher["train_seconds"],
            "n_parameters": teacher["n_parameters"],
        },
        "teacher_cache_seconds": done["cache_all"]["train_seconds"],
        "students": [
            {
                **{k: v for k, v in done[j.name].items() if k not in ("log", "curve")},
                "acc1_by_epoch": [e["test_acc1"] for e in done[j.name]["log"]],
            }
            for j in _table3(jobs)
        ],
        "curve": curve,
        "heads": heads,
    }


def _pictures(out: Path, results: dict, jobs: list[Job], done: dict, data_set: str, data_path) -> None:
    """curve.png, curves.png and attention.png."""
    from .viz import plot_curves, plot_label_curve

    plot_label_curve(
        [{**p, "method": curve_label(p["method"])} for p in results["curve"]],
        out / "curve.png",
        title=f"{results['data_set']}, seed {results['seed']}",
    )
    logs = {
        "teacher (CNN)": done["teacher_all"]["log"],
        **{j.row["method"]: done[j.name]["log"] for j in _table3(jobs)},
    }
    plot_curves(logs, out / "curves.png")
    heat_maps(out, results["students"], data_set, data_path)


def _config(out: Path, name: str, settings: dict, common: dict) -> TrainConfig:
    values, explicit = merge({}, {**settings, **common, "run.output_dir": str(out / name)})
    return TrainConfig.from_dict(values, explicit)


def study_jobs(out: Path, common: dict, targets: list[int], counts: tuple) -> list[Job]:
    """The runs of the study, for each count of labels per class (None: all): the teacher on the labelled images,
    its cache over the students' views, the student alone on the labelled images (passed over as many times as the
    distilled students' epochs need: the same steps), the distilled students on all images, the unlabelled rest
    taught by the teacher alone. In the order a free process takes them up."""
    smallest = min(Counter(targets).values())
    counts = [n for n in counts if n is None or n < smallest]  # a count at or above the smallest class is "all"
    teachers, caches, distilled, alone = [], [], [], []
    for n in counts:
        tag = "all" if n is None else str(n)
        labelled = len(targets) if n is None else len(first_per_class(targets, n))
        few = {} if n is None else {"data.labels_per_class": n}
        unlabelled = {} if n is None else {**few, "data.unlabelled": True}
        teacher, cache = f"teacher_{tag}", f"cache_{tag}"
        repeat = max(1, math.ceil(TEACHER_EPOCH_IMAGES / labelled))
        teachers.append(
            Job(
                teacher,
                _config(out, teacher, {**TEACHER, **few, "data.repeat": repeat}, common),
                {"method": "teacher", "model": TEACHER_MODEL, "labels": n, "curve": "teacher"},
            )
        )
        # one pass of the teacher serves every distilled student: the hard + attention settings ask for all
        # that any of them reads, logits and maps
        reads = {"distill.teacher_path": str(out / teacher), "distill.teacher_cache": str(out / cache / CACHE)}
        caches.append(
            Job(
                cache,
                _config(
                    out,
                    cache,
                    {**STUDENTS, "model.model": DISTILLED_STUDENT, **METHODS[-1][2], **reads, **unlabelled},
                    common,
                ),
                after=(teacher,),
                cache_only=True,
            )
        )
        for label, model, settings in METHODS:
            if n is not None and (label, model, settings) not in STUDY.values():
                continue
            name = f"{run_name(label)}_{tag}"
            row = {
                "method": label,
                "model": model,
                "teacher": TEACHER_MODEL if settings else None,
                "labels": n,
                "curve": next((k for k, (m, _, _) in STUDY.items() if m == label), None),
            }
            if settings:
                cfg = _config(out, name, {**STUDENTS, "model.model": model, **settings, **reads, **unlabelled}, common)
                distilled.append(Job(name, cfg, row, after=(cache,)))
            else:
                repeat = max(1, round(len(targets) / labelled))
                cfg = _config(out, name, {**STUDENTS, "model.model": model, **few, "data.repeat": repeat}, common)
                alone.append(Job(name, cfg, row))
    # the teacher of all labels first: its cache and three students are the longest chain
    return teachers[::-1] + caches[::-1] + distilled[::-1] + alone


def train_side_by_side(jobs: list[Job], out: Path, lanes: int | None = None) -> dict[str, dict]:
    """Run the jobs in `lanes` processes at once, the machine's cores shared among them, each when the jobs it
    reads (`after`) are done, in list order; one progress bar each, fed by its log (a cache: by its epoch files).
    Returns name -> {**row, "train_seconds"} and, for a training run, acc1, n_parameters and its log.

    However this ends (done, a run's failure, Ctrl-C, SIGTERM), no process of it outlives it.
    """
    import multiprocessing

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    context = multiprocessing.get_context("spawn")
    cores = os.cpu_count() or 1
    lanes = max(1, min(lanes or min(cores, 4), len(jobs)))
    threads = max(1, cores // lanes)
    columns = [
        TextColumn("{task.description:<36}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    ]
    pending, running, seconds, free, workers, told = list(jobs), {}, {}, [], [], False
    try:
        # one process per lane, each taking up job after job: torch is imported once per lane, not once per run
        for _ in range(lanes):
            ours, theirs = context.Pipe()
            process = context.Process(target=_lane, args=(theirs, threads))
            process.start()
            theirs.close()
            workers.append((process, ours))
        free = list(workers)
        with Progress(*columns, transient=False) as bar:
            tasks = {job.name: bar.add_task(job.name, total=job.cfg.run.epochs, info="waiting") for job in jobs}
            while pending or running:
                for job in [j for j in pending if all(a in seconds for a in j.after)]:
                    if free:
                        pending.remove(job)
                        worker = free.pop()
                        worker[1].send((job.cfg, job.cache_only))
                        running[job.name] = (job, worker, time.perf_counter())
                time.sleep(0.5)
                for name, (job, worker, started) in list(running.items()):
                    process, pipe = worker
                    if job.cache_only:
                        made = len(list(Path(job.cfg.distill.teacher_cache).glob("epoch_*")))
                        bar.update(tasks[name], completed=made, info="teacher outputs")
                    else:
                        log = read_log(out / name / "log.jsonl")
                        info = f"top-1 {log[-1]['test_acc1']:.1f}%" if log else "starting"
                        bar.update(tasks[name], completed=len(log), info=info)
                    if process.is_alive() and not pipe.poll():
                        continue
                    try:
                        outcome = pipe.recv() if pipe.poll() else ("error", "bug", f"exit code {process.exitcode}")
                    except EOFError:  # it ended as it answered
                        outcome = ("error", "bug", f"exit code {process.exitcode}")
                    del running[name]
                    if outcome[0] != "ok":  # bad input stays a one-line error; anything else is a bug to show
                        kind = ValueError if outcome[1] == "input" else RuntimeError
                        raise kind(f"the {name} run failed: {outcome[2]} (its output: {out / name / 'train.out'})")
                    seconds[name] = round(time.perf_counter() - started, 1)
                    free.append(worker)
        for _, pipe in free:  # done: each lane ends when told
            with contextlib.suppress(OSError):
                pipe.send(None)
        told = True
    finally:
        _stop([process for process, _ in workers], wait=2.0 if told else 0.0)
    done = {}
    for job in jobs:
        done[job.name] = {**job.row, "train_seconds": seconds[job.name]}
        if not job.cache_only:
            log = read_log(out / job.name / "log.jsonl")
            done[job.name].update(acc1=log[-1]["test_acc1"], n_parameters=log[-1]["n_parameters"], log=log)
    return done


def _stop(processes: list, grace: float = 10.0, wait: float = 0.0) -> None:
    """SIGTERM to each still running (a clean stop: its loader processes end with it), SIGKILL to any still alive
    after `grace` seconds. Lanes told to end get `wait` seconds to end by themselves first."""
    deadline = time.monotonic() + wait
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _lane(jobs, threads: int) -> None:
    """A lane of the demo: runs (cfg, cache_only) jobs from the `jobs` pipe one after the other, `threads` compute
    threads, each run's output in its train.out; answers each with ("ok",) or ("error", "input" | "bug", message).
    Ends on None, when the demo's end of the pipe closes, or with the demo's process."""
    import multiprocessing

    _end_with_parent()
    # this process was spawned (a clean start); its loader processes are forked, as those of `deit train` are:
    # spawned ones import torch again, and take seconds to start and to stop
    if "fork" in multiprocessing.get_all_start_methods():
        multiprocessing.set_start_method("fork", force=True)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    with contextlib.suppress(KeyboardInterrupt), sigterm_as_interrupt():
        while True:
            try:
                job = jobs.recv()
            except (EOFError, OSError):
                return
            if job is None:
                return
            result = _train_quietly(*job)
            with contextlib.suppress(OSError):  # the demo may be gone
                jobs.send(result)
            if result[2:] == ("interrupted",):
                return


def _train_quietly(cfg: TrainConfig, cache_only: bool = False) -> tuple:
    """One run, its output (Python's and the file descriptors') in its folder's train.out; what happened."""
    folder = Path(cfg.run.output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "train.out", "w") as f:
            # the file descriptors too: what torch or a loader process prints stays out of the demo's terminal
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            (make_teacher_cache if cache_only else run)(cfg)
        return ("ok",)
    except KeyboardInterrupt:
        return ("error", "input", "interrupted")
    except (ValueError, OSError) as e:
        return ("error", "input", str(e))
    except BaseException as e:
        return ("error", "bug", f"{type(e).__name__}: {e}")


def _end_with_parent() -> None:
    """Linux: this process gets SIGTERM when the demo's process ends, even killed with SIGKILL."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _prepare(out: Path) -> Path:
    """The demo writes into its own folder (locked by the caller); a previous demo's runs there are replaced,
    anything else is kept."""
    if any(child.name != LOCK for child in out.iterdir()):
        if not (out / MARKER).exists():
            raise ValueError(f"{out} is not empty and holds no earlier demo; pick another --output_dir")
        for child in out.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
    write_text(out / MARKER, "written by `deit demo`; its runs here are replaced when the demo runs again\n")
    return out


def _short(label: str) -> str:
    """A method without its settings: "hard + attention (beta 1)" -> "hard + attention"."""
    return label.split(" (")[0]


def run_name(label: str) -> str:
    """The run folder of a method: "hard + attention (beta 1)" -> "hard_attention"."""
    return slug(_short(label), "_")


def machine() -> str:
    return f"{cpu_name()}, torch {torch.__version__.split('+')[0]}"


def _row(*cells) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def report_table(results: dict) -> str:
    teacher = results["teacher"]
    rows = [
        _row("method", "teacher", "student top-1", "parameters", "training time"),
        "|---|---|---|---|---|",
        _row(
            f"teacher alone ({teacher['model']})",
            "-",
            f"{teacher['acc1']:.1f}%",
            f"{teacher['n_parameters'] / 1e6:.2f}M",
            f"{teacher['train_seconds']:.0f} s",
        ),
    ]
    if "teacher_cache_seconds" in results:
        cached = f"{results['teacher_cache_seconds']:.0f} s"
        rows.append(_row("teacher outputs on the students' views, cached once", "-", "-", "-", cached))
    for s in results["students"]:
        size, seconds = f"{s['n_parameters'] / 1e6:.2f}M", f"{s['train_seconds']:.0f} s"
        rows.append(_row(s["method"], s["teacher"] or "-", f"{s['acc1']:.1f}%", size, seconds))
    return "\n".join(rows)


def curve_table(results: dict) -> str:
    """Top-1 of each method (rows) at each count of labels per class (columns)."""
    counts = sorted({p["labels_per_class"] for p in results["curve"]})
    at = {(p["method"], p["labels_per_class"]): p["acc1"] for p in results["curve"]}
    rows = [
        "| labelled images per class | " + " | ".join(str(n) for n in counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    for method in ("teacher", *STUDY):
        cells = [f"{at[method, n]:.1f}%" if (method, n) in at else "-" for n in counts]
        rows.append(f"| {curve_label(method)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def curve_label(method: str) -> str:
    return {
        "teacher": "teacher (small_cnn), labelled images",
        "none": "DeiT alone, labelled images",
        "hard": "DeiT, hard distillation, + unlabelled",
        "hard + attention": "DeiT, hard + attention, + unlabelled",
    }[method]


def curve_findings(results: dict) -> list[str]:
    """What the study says, in sentences computed from the numbers."""
    at = {(p["method"], p["labels_per_class"]): p["acc1"] for p in results["curve"]}
    counts = sorted({n for _, n in at})
    lines = []
    for n in counts:
        teacher, none, hard, both = (at.get((m, n)) for m in ("teacher", *STUDY))
        if None in (teacher, none, hard, both):
            continue
        lines.append(
            f"{n} labels per class: hard distillation {hard:.1f}% against {none:.1f}% for the student alone "
            f"({hard - none:+.1f} points), hard + attention {both:.1f}% ({both - none:+.1f}); the teacher "
            f"{teacher:.1f}% (hard {hard - teacher:+.1f}, hard + attention {both - teacher:+.1f} against it)."
        )
    margins = [at[("hard", n)] - at[("none", n)] for n in counts if ("hard", n) in at and ("none", n) in at]
    if len(margins) > 1:
        trend = (
            "narrows as labels grow"
            if all(a > b for a, b in zip(margins, margins[1:]))
            else "does not narrow at every step as labels grow"
        )
        lines.append(
            f"The distilled student's margin over the student alone {trend}: "
            + ", ".join(f"{m:+.1f}" for m in margins)
            + f" points at {', '.join(map(str, counts))} labels."
        )
    for h in results.get("heads", []):
        if h["labels_per_class"] == counts[0]:
            lines.append(
                f"Heads of the {h['method']} student at {counts[0]} labels: class token {h['class']:.1f}%, "
                f"distillation token {h['distillation']:.1f}%, their average {h['average']:.1f}% (used)."
            )
    return lines


def findings(results: dict) -> list[str]:
    """What the Table-3 rows say, in plain sentences computed from the numbers."""
    by = {_short(s["method"]): s["acc1"] for s in results["students"]}
    none, hard = by["none"], by["hard, distillation token"]
    soft = next(v for k, v in by.items() if k.startswith("soft"))
    attention = next(v for k, v in by.items() if k.startswith("hard + attention"))
    lines = [
        f"Hard distillation through the distillation token: {hard:.1f}% against {none:.1f}% without a teacher "
        f"({hard - none:+.1f} points).",
        f"Soft distillation: {soft:.1f}% ({soft - none:+.1f} points against none, {soft - hard:+.1f} against hard).",
        f"Attention distillation on top of hard: {attention:.1f}% ({attention - hard:+.1f} points).",
    ]
    curves = {_short(s["method"]): s.get("acc1_by_epoch") for s in results["students"]}
    with_attention = next((v for k, v in curves.items() if k.startswith("hard + attention")), None)
    hard_curve = curves.get("hard, distillation token")
    if with_attention and hard_curve and len(with_attention) > 2:
        mid = len(with_attention) // 4
        lines.append(
            f"After {mid + 1} of {len(hard_curve)} epochs: {with_attention[mid]:.1f}% with the attention "
            f"term, {hard_curve[mid]:.1f}% for hard alone, {curves['none'][mid]:.1f}% without a teacher."
        )
    vit = by.get("hard, ViT teacher")
    if vit is not None:
        lines.append(
            f"A transformer teacher (the student trained without one) gives {vit:.1f}%, the CNN teacher {hard:.1f}%."
        )
    return lines


def heads_table(results: dict) -> str:
    rows = [
        _row("labelled images per class", "method", "class token", "distillation token", "average (used)"),
        "|---|---|---|---|---|",
    ]
    for h in results["heads"]:
        heads = [f"{h[key]:.1f}%" for key in ("class", "distillation", "average")]
        rows.append(_row(h["labels_per_class"], h["method"], *heads))
    return "\n".join(rows)


def report(results: dict) -> str:
    quick = " (quick mode: a smoke test, not a result)" if results["quick"] else ""
    minutes, rest = divmod(round(results.get("seconds", 0)), 60)
    return "\n".join(
        [
            f"# deit demo: few labels and distillation on {results['data_set']}{quick}",
            "",
            f"Machine: {results['machine']}. Seed {results['seed']}. {minutes} min {rest} s in all. The teacher trains "
            f"on the labelled images; the student (`{STUDENT}`, with a distillation token when distilled) alone on the "
            "labelled images, distilled on those and the unlabelled rest, the same steps either way; top-1 on the "
            "held-out test set.",
            "",
            curve_table(results),
            "",
            *[f"- {line}" for line in curve_findings(results)],
            "",
            "![top-1 against labelled images per class](curve.png)",
            "",
            "## Every label kept: the paper's Table 3",
            "",
            report_table(results),
            "",
            *[f"- {line}" for line in findings(results)],
            "",
            "## The two heads of each distilled student",
            "",
            heads_table(results),
            "",
            "![training curves, every label kept](curves.png)",
            "",
            "![where each model looks](attention.png)",
            "",
        ]
    )


def test_batches(data_set: str, data_path: str | None, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The test split as normalised (images, targets) batches at `size` px, read once for every student."""
    from .data.sampling import EvalBatches

    val, info = build_dataset(data_set, data_path, False)
    if not hasattr(val, "tensor") or val.images.shape[1] != size:  # a folder: read through the eval transform
        from .data import eval_transform

        val.transform = eval_transform(size, mean=info.mean, std=info.std, crop_ratio=1.0)
        return [(torch.stack([val[i][0] for i in range(len(val))]), torch.as_tensor(val.targets))]
    return list(EvalBatches(val.tensor(), val.targets, mean=info.mean, std=info.std, batch_size=500))


@torch.no_grad()
def head_accuracy(run: Path, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Test top-1 (%) of a distilled student's class head, distillation head, and their average (what the model
    answers in eval mode)."""
    from .models import create_model

    model = create_model(pretrained=run / "checkpoint.pth").eval()
    hits, count = torch.zeros(3), 0
    for images, targets in batches:
        tokens = model.forward_features(images)
        cls, dist = model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])
        for i, logits in enumerate((cls, dist, (cls + dist) / 2)):
            hits[i] += (logits.argmax(1) == targets).sum()
        count += len(targets)
    return dict(zip(("class", "distillation", "average"), (round(100 * h.item() / count, 2) for h in hits)))


def heat_maps(out: Path, students: list[dict], data_set: str, data_path: str | None, count: int = 4) -> None:
    """attention.png: a few test images, the teacher's activation map and each student's last-block class-token
    attention over the patches."""
    from .data import build_dataset, eval_transform
    from .distill.attention import activation_map, patch_attention
    from .models import create_model
    from .teachers import load_teacher
    from .viz import attention_grid

    val, info = build_dataset(data_set, data_path, False)
    val.transform = eval_transform(28, mean=info.mean, std=info.std, crop_ratio=1.0)
    picked, seen = [], set()
    for index, target in enumerate(val.targets):  # the first image of the first `count` classes
        if target not in seen:
            seen.add(target)
            picked.append(index)
        if len(picked) == count:
            break
    x = torch.stack([val[i][0] for i in picked])
    shown = (x[:, 0] * info.std[0] + info.mean[0]).clamp(0, 1)
    teacher = load_teacher(TEACHER_MODEL, out / "teacher_all", num_classes=info.num_classes, in_chans=info.in_chans)
    with torch.no_grad():
        columns = {"teacher (CNN)": activation_map(teacher.model.forward_features(x))}
        for student in students:
            model = create_model(pretrained=out / f"{run_name(student['method'])}_all" / "checkpoint.pth").eval()
            _, rows = model.forward_attention(x, blocks=-1, form="cls")
            columns[_short(student["method"])] = patch_attention(
                rows[len(model.blocks) - 1], model.num_prefix_tokens, per_head=False
            )
    attention_grid(shown, columns, out / "attention.png", [info.class_names[val.targets[i]] for i in picked])
