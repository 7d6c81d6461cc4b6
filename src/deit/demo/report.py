"""report.md: the demo's tables and findings, every sentence computed from the numbers."""

from __future__ import annotations

from .plan import STUDY, short_label


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
        "soft + attention": "DeiT, soft + attention, + unlabelled",
    }[method]


def curve_findings(results: dict) -> list[str]:
    """What the study says, in sentences computed from the numbers."""
    at = {(p["method"], p["labels_per_class"]): p["acc1"] for p in results["curve"]}
    counts = sorted({n for _, n in at})
    lines = []
    for n in counts:
        teacher, none, hard, soft = (at.get((m, n)) for m in ("teacher", *STUDY))
        if None in (teacher, none, hard, soft):
            continue
        lines.append(
            f"{n} labels per class: hard distillation {hard:.1f}% against {none:.1f}% for the student alone "
            f"({hard - none:+.1f} points), soft + attention {soft:.1f}% ({soft - none:+.1f}); the teacher "
            f"{teacher:.1f}% (hard {hard - teacher:+.1f}, soft + attention {soft - teacher:+.1f} against it)."
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
    by = {short_label(s["method"]): s["acc1"] for s in results["students"]}
    none, hard = by["none"], by["hard, distillation token"]
    soft, attention = by["soft"], by["soft + attention"]
    lines = [
        f"Hard distillation through the distillation token: {hard:.1f}% against {none:.1f}% without a teacher "
        f"({hard - none:+.1f} points).",
        f"Soft distillation: {soft:.1f}% ({soft - none:+.1f} points against none, {soft - hard:+.1f} against hard).",
        f"Soft distillation weighted up, with the attention term: {attention:.1f}% ({attention - hard:+.1f} points "
        "against hard).",
    ]
    curves = {short_label(s["method"]): s.get("acc1_by_epoch") for s in results["students"]}
    with_attention = curves.get("soft + attention")
    hard_curve = curves.get("hard, distillation token")
    if with_attention and hard_curve and len(with_attention) > 2:
        mid = len(with_attention) // 4
        lines.append(
            f"After {mid + 1} of {len(hard_curve)} epochs: {with_attention[mid]:.1f}% for soft + attention, "
            f"{hard_curve[mid]:.1f}% for hard, {curves['none'][mid]:.1f}% without a teacher."
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


def unreadable_line(results: dict) -> str | None:
    n = results.get("unreadable_images", 0)
    if not n:
        return None
    were = "s could not be read and were" if n > 1 else " could not be read and was"
    return f"{n} training image{were} left out of every run (each run's train.out names them)."


def report(results: dict) -> str:
    quick = " (quick mode: a smoke test, not a result)" if results["quick"] else ""
    minutes, rest = divmod(round(results.get("seconds", 0)), 60)
    schedule = f" ({epochs} epochs at every count)" if (epochs := results["student_epochs"]) else ""
    return "\n".join(
        [
            f"# deit demo: few labels and distillation on {results['data_set']}{quick}",
            "",
            f"Machine: {results['machine']}. Seed {results['seed']}. {minutes} min {rest} s in all. The teacher trains "
            f"on the labelled images; the student (`{results['student']}`, with a distillation token when distilled) "
            "alone on the labelled images, distilled on those and the unlabelled rest, the same steps either way"
            f"{schedule}; top-1 on the held-out test set.",
            *(["", line] if (line := unreadable_line(results)) else []),
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
