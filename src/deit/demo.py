"""`deit demo`: the paper's distillation comparison (its Table 3), in minutes on a laptop CPU.

A small CNN teacher is trained on real digits that ship with a package, then the same small DeiT is trained
four ways under the same budget: without a teacher, with soft distillation, with hard distillation through the
distillation token, and with hard + attention distillation. The report gives each student's top-1 and training
time; pictures show the training curves and where each model looks.

The regime: 4,000 training images (28 px MNIST digits), a 0.21M-parameter DeiT with 7 px patches (a 4x4 grid),
the same 40 epochs for every student, a fixed seed. Few images are where a ViT struggles and a teacher's inductive
bias should show, as the paper argues. The images are augmented a batch at a time (`--batch-aug`), the teacher's
outputs are cached once for the distilled students, and the students train side by side, one process per core.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import torch

from .checkpoint import read_log
from .config import TrainConfig, merge
from .data.datasets import BUILTINS, canonical_name
from .distributed import cpu_name
from .failures import sigterm_as_interrupt
from .files import LOCK, FolderLock, write_text
from .models.registry import MODELS
from .train import run

MARKER = ".deit-demo"
DEMO_FILES = ("report.md", "results.json", "curves.png", "attention.png", MARKER)
TEACHER_MODEL = "small_cnn"
STUDENT = "deit_pico_patch7_28"
DISTILLED_STUDENT = "deit_pico_distilled_patch7_28"

TEACHER = {  # trained at the students' size, on the views they will see (digits: 8 px upscaled; folders: 28 px)
    "model.model": TEACHER_MODEL, "model.input_size": MODELS[STUDENT].img_size, "run.epochs": 9, "run.batch_size": 64,
    "optim.lr": 0.024, "optim.warmup_epochs": 0.3, "optim.model_ema": False, "aug.aa": "rand-m5-mstd0.5-inc1",
    "aug.crop_scale": 0.6, "aug.reprob": 0.0, "aug.mixup": 0.0,
}  # fmt: skip
STUDENTS = {
    "run.epochs": 40, "run.batch_size": 32, "optim.lr": 0.032, "optim.warmup_epochs": 1.0, "optim.model_ema": False,
    "aug.aa": None, "aug.crop_scale": 0.75, "aug.reprob": 0.1, "aug.mixup": 0.0, "model.drop_path": 0.0,
}  # fmt: skip
ATTENTION_WEIGHT = 1.0
# (label, model, settings): the rows of the report, in the paper's order
METHODS = [
    ("none", STUDENT, {}),
    ("soft (tau 3, alpha 0.1)", DISTILLED_STUDENT,
     {"distill.distillation_type": "soft", "distill.distillation_tau": 3.0, "distill.distillation_alpha": 0.1}),
    ("hard, distillation token", DISTILLED_STUDENT,
     {"distill.distillation_type": "hard", "distill.distillation_alpha": 0.5}),
    (f"hard + attention (beta {ATTENTION_WEIGHT:g})", DISTILLED_STUDENT,
     {"distill.distillation_type": "hard", "distill.distillation_alpha": 0.5,
      "distill.attn_distillation_weight": ATTENTION_WEIGHT}),
]  # fmt: skip
QUICK = {"data.labels_per_class": 20, "run.epochs": 1}


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
    """Train the teacher and the students; write report.md, results.json, curves.png and attention.png.

    `lanes`: students trained at once, each in its own process (default: one per CPU core, at most four). The
    demo owns its folder while it runs (a lock); stopped (Ctrl-C, SIGTERM), it stops its student processes too.
    """
    out = Path(output_dir)
    with FolderLock(out, "deit demo", owns=DEMO_FILES):
        _prepare(out)
        return _demo(out, data_set=data_set, data_path=data_path, quick=quick, seed=seed, vit_teacher=vit_teacher,
                     num_workers=num_workers, lanes=lanes)  # fmt: skip


def _demo(out: Path, *, data_set: str, data_path: str | None, quick: bool, seed: int, vit_teacher: bool,
          num_workers: int, lanes: int | None) -> dict:  # fmt: skip
    in_memory = canonical_name(data_set) in BUILTINS  # augmented a batch at a time, without loader processes
    common = {"data.data_set": data_set, "data.data_path": data_path, "run.seed": seed, "aug.batch_aug": in_memory,
              "data.num_workers": num_workers, **(QUICK if quick else {})}  # fmt: skip

    def config(name: str, settings: dict) -> TrainConfig:
        values, explicit = merge({}, {**settings, **common, "run.output_dir": str(out / name)})
        return TrainConfig.from_dict(values, explicit)

    def train(name: str, settings: dict) -> dict:
        start = time.perf_counter()
        run(config(name, settings))
        seconds = time.perf_counter() - start
        log = read_log(out / name / "log.jsonl")
        return {"acc1": log[-1]["test_acc1"], "train_seconds": round(seconds, 1),
                "n_parameters": log[-1]["n_parameters"], "log": log}  # fmt: skip

    print("deit demo: the teacher first, then the same DeiT student with each method")
    teacher = train("teacher", TEACHER)
    # The teacher runs once over every student's views (they share seed and augmentation); the students read it.
    # The hard + attention student's settings ask for everything any student needs: logits and maps.
    cache = {"distill.teacher_path": str(out / "teacher"), "distill.teacher_cache": str(out / "teacher_cache")}
    start = time.perf_counter()
    run(config("teacher_cache", {**STUDENTS, "model.model": DISTILLED_STUDENT, **METHODS[-1][2], **cache}),
        cache_only=True)  # fmt: skip
    cache_seconds = round(time.perf_counter() - start, 1)
    jobs = [(_slug(label), {"method": label, "model": model, "teacher": TEACHER_MODEL if settings else None},
             config(_slug(label), {**STUDENTS, "model.model": model, **settings, **(cache if settings else {})}))
            for label, model, settings in METHODS]  # fmt: skip
    if vit_teacher:  # the paper's other teacher: a transformer (here the student trained without one), run online
        jobs.append(("hard_vit_teacher", {"method": "hard, ViT teacher", "model": DISTILLED_STUDENT, "teacher": STUDENT},
                     config("hard_vit_teacher", {**STUDENTS, "model.model": DISTILLED_STUDENT,
                                                 "distill.distillation_type": "hard",
                                                 "distill.teacher_path": str(out / _slug("none"))})))  # fmt: skip
    students = train_side_by_side(jobs, out, lanes=lanes)

    results = {
        "data_set": data_set, "seed": seed, "quick": quick, "machine": machine(),
        "teacher": {"model": TEACHER_MODEL, "acc1": teacher["acc1"], "train_seconds": teacher["train_seconds"],
                    "n_parameters": teacher["n_parameters"]},
        "teacher_cache_seconds": cache_seconds,
        "students": [{**{k: v for k, v in s.items() if k != "log"}, "acc1_by_epoch": [e["test_acc1"] for e in s["log"]]}
                     for s in students],
    }  # fmt: skip
    write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    from .viz import plot_curves

    plot_curves({"teacher (CNN)": teacher["log"], **{s["method"]: s["log"] for s in students}}, out / "curves.png")
    heat_maps(out, students, data_set, data_path)
    write_text(out / "report.md", report(results))
    print(f"\n{report_table(results)}\nreport, results and pictures in {out}/")
    return results


def train_side_by_side(jobs: list[tuple[str, dict, TrainConfig]], out: Path, lanes: int | None = None) -> list[dict]:
    """Train (name, row, config) jobs in `lanes` processes at once, the machine's cores shared among them; one
    progress bar per student, fed by its log. A run that reads another's weights (a ViT teacher: the "none"
    student) waits for it. Returns the rows with acc1, train_seconds, n_parameters and the log.

    However this ends (done, a student's failure, Ctrl-C, SIGTERM), no student process outlives it.
    """
    import multiprocessing

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    context = multiprocessing.get_context("spawn")
    cores = os.cpu_count() or 1
    lanes = max(1, min(lanes or min(cores, 4), len(jobs)))
    threads = max(1, cores // lanes)
    names = {name for name, _, _ in jobs}
    waits = {name: Path(cfg.distill.teacher_path).name for name, _, cfg in jobs
             if cfg.distill.teacher_path and Path(cfg.distill.teacher_path).name in names}  # fmt: skip
    columns = [TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn()]  # fmt: skip
    pending, running, done = list(jobs), {}, {}
    try:
        with Progress(*columns, transient=False) as bar:
            tasks = {name: bar.add_task(row["method"], total=cfg.run.epochs, info="waiting") for name, row, cfg in jobs}
            while pending or running:
                for job in [j for j in pending if waits.get(j[0]) is None or waits[j[0]] in done]:
                    if len(running) < lanes:
                        pending.remove(job)
                        name, _, cfg = job
                        receive, send = context.Pipe(duplex=False)
                        process = context.Process(target=_train_quietly, args=(cfg, threads, send), name=name)
                        process.start()
                        send.close()
                        running[name] = (process, receive, time.perf_counter())
                time.sleep(0.5)
                for name, (process, receive, started) in list(running.items()):
                    log = read_log(out / name / "log.jsonl")
                    info = f"top-1 {log[-1]['test_acc1']:.1f}%" if log else "starting"
                    bar.update(tasks[name], completed=len(log), info=info)
                    if process.is_alive() and not receive.poll():
                        continue
                    outcome = receive.recv() if receive.poll() else ("error", "bug", f"exit code {process.exitcode}")
                    process.join()
                    del running[name]
                    if outcome[0] != "ok":  # bad input stays a one-line error; anything else is a bug to show
                        kind = ValueError if outcome[1] == "input" else RuntimeError
                        raise kind(f"the {name} student failed: {outcome[2]} (its output: {out / name / 'train.out'})")
                    done[name] = round(time.perf_counter() - started, 1)
    finally:
        _stop([process for process, _, _ in running.values()])
    rows = []
    for name, row, _ in jobs:
        log = read_log(out / name / "log.jsonl")
        rows.append({**row, "acc1": log[-1]["test_acc1"], "train_seconds": done[name],
                     "n_parameters": log[-1]["n_parameters"], "log": log})  # fmt: skip
    return rows


def _stop(processes: list, grace: float = 10.0) -> None:
    """SIGTERM to each (a clean stop: its loader processes end with it), SIGKILL to any still alive after
    `grace` seconds."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _train_quietly(cfg: TrainConfig, threads: int, outcome) -> None:
    """One student in a process of its own, `threads` compute threads, its output in train.out; what happened goes
    back through `outcome` (a pipe): ("ok",) or ("error", "input" | "bug", message)."""
    import multiprocessing

    _end_with_parent()
    # this process was spawned (a clean start); its loader processes are forked, as those of `deit train` are:
    # spawned ones import torch again, and take seconds to start and to stop
    if "fork" in multiprocessing.get_all_start_methods():
        multiprocessing.set_start_method("fork", force=True)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    folder = Path(cfg.run.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with sigterm_as_interrupt(), open(folder / "train.out", "w") as f:
            # the file descriptors too: what torch or a loader process prints stays out of the demo's terminal
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            run(cfg)
        result = ("ok",)
    except KeyboardInterrupt:
        result = ("error", "input", "interrupted")
    except (ValueError, OSError) as e:
        result = ("error", "input", str(e))
    except BaseException as e:
        result = ("error", "bug", f"{type(e).__name__}: {e}")
    with contextlib.suppress(OSError):  # the demo may be gone
        outcome.send(result)


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


def _slug(label: str) -> str:
    """The run folder of a method: "hard + attention (beta 1)" -> "hard_attention"."""
    return re.sub(r"[^a-z0-9]+", "_", _short(label).lower()).strip("_")


def machine() -> str:
    return f"{cpu_name()}, torch {torch.__version__.split('+')[0]}"


def report_table(results: dict) -> str:
    teacher = results["teacher"]
    rows = [
        "| method | teacher | student top-1 | parameters | training time |",
        "|---|---|---|---|---|",
        f"| teacher alone ({teacher['model']}) | - | {teacher['acc1']:.1f}% | {teacher['n_parameters'] / 1e6:.2f}M "
        f"| {teacher['train_seconds']:.0f} s |",
    ]
    if "teacher_cache_seconds" in results:
        rows.append(f"| teacher outputs on the students' views, cached once | - | - | - "
                    f"| {results['teacher_cache_seconds']:.0f} s |")  # fmt: skip
    for s in results["students"]:
        rows.append(f"| {s['method']} | {s['teacher'] or '-'} | {s['acc1']:.1f}% | {s['n_parameters'] / 1e6:.2f}M "
                    f"| {s['train_seconds']:.0f} s |")  # fmt: skip
    return "\n".join(rows)


def findings(results: dict) -> list[str]:
    """What the table says about the paper's claims, in plain sentences computed from the numbers."""
    by = {_short(s["method"]): s["acc1"] for s in results["students"]}
    none, hard = by["none"], by["hard, distillation token"]
    soft = next(v for k, v in by.items() if k.startswith("soft"))
    attention = next(v for k, v in by.items() if k.startswith("hard + attention"))
    lines = [
        f"Hard distillation through the distillation token: {hard:.1f}% against {none:.1f}% without a teacher "
        f"({hard - none:+.1f} points).",
        f"Soft distillation: {soft:.1f}% ({soft - none:+.1f} points against none, {soft - hard:+.1f} against hard).",
    ]
    if attention >= hard:
        lines.append(f"Attention distillation on top of hard: {attention:.1f}% ({attention - hard:+.1f} points).")
    else:
        lines.append(
            f"Attention distillation on top of hard: {attention:.1f}%, {hard - attention:.1f} points below hard alone "
            "in this run. The teacher's map is a CNN activation map pooled to the student's 4x4 grid: a coarse "
            "target that asks the class token to look where the CNN's features are strongest, which on centred "
            "digits carries little that the labels do not; the extra term also takes gradient away from the two "
            "heads within the same short budget."
        )
    curves = {_short(s["method"]): s.get("acc1_by_epoch") for s in results["students"]}
    with_attention = next((v for k, v in curves.items() if k.startswith("hard + attention")), None)
    hard_curve = curves.get("hard, distillation token")
    if with_attention and hard_curve and len(with_attention) > 2:
        mid = len(with_attention) // 4
        lines.append(
            f"Early in training the attention term speeds the student up: after {mid + 1} of {len(hard_curve)} "
            f"epochs, {with_attention[mid]:.1f}% with it against {hard_curve[mid]:.1f}% for hard alone and "
            f"{curves['none'][mid]:.1f}% without a teacher."
            if with_attention[mid] > hard_curve[mid] else
            f"After {mid + 1} of {len(hard_curve)} epochs: {with_attention[mid]:.1f}% with the attention term, "
            f"{hard_curve[mid]:.1f}% for hard alone, {curves['none'][mid]:.1f}% without a teacher."
        )  # fmt: skip
    if hard - none < 2:
        lines.append(
            f"The teacher's margin is small here ({hard - none:+.1f} points): with mild augmentation a teacher that "
            "fits the training images gives hard labels equal to the true ones on nearly every view, so the "
            "distillation token learns little the class token does not. The paper's gains come with strong "
            "augmentation (RandAugment, Mixup, CutMix) and long schedules, where the teacher relabels views the "
            "augmentation has changed; within ten CPU minutes a student trained that way has not converged."
        )
    vit = by.get("hard, ViT teacher")
    if vit is not None:
        lines.append(f"A transformer teacher (the student trained without one) gives {vit:.1f}%, the CNN teacher "
                     f"{hard:.1f}%: the paper found a convnet teacher better too.")  # fmt: skip
    return lines


def report(results: dict) -> str:
    quick = " (quick mode: a smoke test, not a result)" if results["quick"] else ""
    return "\n".join([
        f"# deit demo: distillation on {results['data_set']}{quick}",
        "",
        f"Machine: {results['machine']}. Seed {results['seed']}. The same student (`{STUDENT}`, with a "
        f"distillation token when distilled) and the same epochs for every method; top-1 on the held-out test set.",
        "",
        report_table(results),
        "",
        *[f"- {line}" for line in findings(results)],
        "",
        "![training curves](curves.png)",
        "",
        "![where each model looks](attention.png)",
        "",
    ])  # fmt: skip


def heat_maps(out: Path, students: list[dict], data_set: str, data_path: str | None, count: int = 4) -> None:
    """attention.png: a few test images, the teacher's activation map and each student's last-block class-token
    attention over the patches."""
    from .data import build_dataset, build_transform
    from .distill.attention import activation_map, patch_attention
    from .models import create_model
    from .teachers import load_teacher
    from .viz import attention_grid

    val, info = build_dataset(data_set, data_path, False)
    val.transform = build_transform(False, img_size=28, mean=info.mean, std=info.std, eval_crop_ratio=1.0)
    picked, seen = [], set()
    for index, target in enumerate(val.targets):  # the first image of the first `count` classes
        if target not in seen:
            seen.add(target)
            picked.append(index)
        if len(picked) == count:
            break
    x = torch.stack([val[i][0] for i in picked])
    shown = (x[:, 0] * info.std[0] + info.mean[0]).clamp(0, 1)
    teacher = load_teacher(TEACHER_MODEL, out / "teacher", num_classes=info.num_classes, in_chans=info.in_chans)
    with torch.no_grad():
        columns = {"teacher (CNN)": activation_map(teacher.model.forward_features(x))}
        for student in students:
            model = create_model(pretrained=out / _slug(student["method"]) / "checkpoint.pth").eval()
            _, rows = model.forward_attention(x, blocks=-1, form="cls")
            columns[_short(student["method"])] = patch_attention(rows[len(model.blocks) - 1],
                                                                        model.num_prefix_tokens, per_head=False)
    attention_grid(shown, columns, out / "attention.png", [info.class_names[val.targets[i]] for i in picked])
