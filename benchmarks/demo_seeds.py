"""The demo's study over several seeds: does the distilled student beat the student alone by more than the seed
spread, at each count of labels per class?

    python benchmarks/demo_seeds.py                          # seeds 0 1 2, the whole demo each time
    python benchmarks/demo_seeds.py --data-set fashion-mnist --seeds 0
    python benchmarks/demo_seeds.py --student deit_nano_patch7_28 --epochs 72   # another student and schedule

Each seed runs `deit demo` (every teacher and student) into a folder of its own; with `--keep DIR`, a seed whose
demo in DIR finished (its results.json, of the same data set, student, schedule and seed) is read, not run again, so
a long study can be run a seed at a time (`--seeds 0`, later `--seeds 1`, ...) and summed up over all; each seed it
runs there is saved at once as a record of its own (demo_<data set>[...]_seed<N>_<machine>_<date>.json in --out),
which is read in its place when the folder is gone (the newest of this machine's). Prints each
point of the curve (method x labels per class) per seed, mean and spread (max - min); the Table-3 rows (every label
kept); the two heads of the distilled students; the margins the demo is about. Saves
benchmarks/results/demo_seeds_<data set>[_<student>][_<N>-epochs]_<machine>_<date>.json and the mean curve beside it
(.png).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout without an install
from deit.benchmark import save_record
from deit.demo import run_demo
from deit.demo.plan import STUDY, Students
from deit.demo.report import curve_label
from deit.distributed import machine
from deit.files import slug
from deit.viz import plot_label_curve


def points(value: float) -> float:
    """Rounded to the record's 0.01 point, a rounding error's -0.0 as 0.0 (a tie with the teacher reads +0.0)."""
    return round(value, 2) + 0.0


def summary(values: list[float]) -> dict:
    return {"acc1": values, "mean": points(statistics.mean(values)), "spread": points(max(values) - min(values))}


SEED_FIELDS = ("data_set", "seed", "student", "student_epochs", "seconds", "teacher", "teacher_cache_seconds")
SEED_LISTS = ("students", "curve", "heads")


def fits(results: object, data_set: str, seed: int, student: str | None, epochs: int | None) -> bool:
    """Whether `results` (a demo's or a seed record's) are a whole seed of the study with these settings."""
    wanted = {"data_set": data_set, "seed": seed, "student_epochs": epochs}
    return (
        isinstance(results, dict)
        and all(results.get(k) == v for k, v in wanted.items())
        and results.get("student") == Students.of(student).alone
        and all(isinstance(results.get(k), list) for k in SEED_LISTS)
        and isinstance(results.get("seconds"), (int, float))
    )


def finished(folder: Path, data_set: str, seed: int, student: str | None, epochs: int | None) -> dict | None:
    """The results of the demo in `folder` when it finished with these settings, else None (it is run again)."""
    try:
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None
    if not fits(results, data_set, seed, student, epochs) or results.get("quick") is not False:
        return None
    return results


def recorded(out: Path, name: str, data_set: str, seed: int, student: str | None, epochs: int | None) -> dict | None:
    """This machine's newest record of the seed (`seed_record`), when it fits these settings, else None."""
    paths = sorted(Path(out).glob(f"demo_{name}_seed{seed}_{slug(machine())}_*.json"))
    for path in reversed(paths):  # the date ends the name: the newest last
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if fits(results, data_set, seed, student, epochs) and results.get("benchmark") == f"demo_{name}_seed{seed}":
            return results
    return None


def seed_record(results: dict, name: str, command: str, note: str | None) -> dict:
    """One seed's whole results as a record of its own (`demo_<name>_seed<N>`): a study of an hour a seed keeps
    each seed's figures in the repository, whatever becomes of the folder it ran in."""
    record = {
        "benchmark": f"demo_{name}_seed{results['seed']}",
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": command,
        **({"note": note} if note else {}),
    }
    return {**record, **{k: results.get(k) for k in SEED_FIELDS + SEED_LISTS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-set", default="mnist5k")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument(
        "--keep",
        default=None,
        help="a folder to keep each seed's demo in (<study>_seed<N>/), read back once finished, or its record in --out",
    )
    parser.add_argument("--student", default=None, help="`deit demo --student`: a DeiT in place of the demo's")
    parser.add_argument("--epochs", type=int, default=None, help="`deit demo --epochs`: the students' at every count")
    parser.add_argument("--note", default=None, help="a line on how the seeds ran (e.g. beside other work)")
    args = parser.parse_args()
    study = {"student": args.student, "epochs": args.epochs}
    name = "_".join(
        [args.data_set, *([args.student] if args.student else []), *([f"{args.epochs}-epochs"] if args.epochs else [])]
    )

    runs, seconds = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            folder = Path(args.keep or scratch) / f"{name}_seed{seed}"
            settings = (args.data_set, seed, args.student, args.epochs)
            if args.keep and (earlier := finished(folder, *settings)):
                print(f"seed {seed}: the finished demo in {folder} read, not run again")
                runs[seed], seconds[seed] = earlier, earlier["seconds"]
                continue
            if args.keep and not folder.exists() and (earlier := recorded(Path(args.out), name, *settings)):
                print(f"seed {seed}: {folder} is gone; its record in {args.out} read, not run again")
                runs[seed], seconds[seed] = earlier, earlier["seconds"]
                continue
            if args.keep and (folder / "results.json").exists():
                print(f"seed {seed}: {folder} holds a demo of other settings or an unreadable one; it runs again there")
            start = time.perf_counter()
            runs[seed] = run_demo(data_set=args.data_set, output_dir=folder, seed=seed, num_workers=2, **study)
            seconds[seed] = round(time.perf_counter() - start, 1)
            if args.keep:  # a seed of a long study: its figures saved now, on their own
                command = " ".join(["python benchmarks/demo_seeds.py", *sys.argv[1:]])
                save_record(seed_record(runs[seed], name, command, args.note), args.out)
    first = runs[args.seeds[0]]
    curve = []
    for point in first["curve"]:
        key = (point["labels_per_class"], point["method"])
        values = [
            next(p["acc1"] for p in r["curve"] if (p["labels_per_class"], p["method"]) == key) for r in runs.values()
        ]
        curve.append({"labels_per_class": key[0], "method": key[1], **summary(values)})
    table3 = {"teacher": summary([r["teacher"]["acc1"] for r in runs.values()])}
    for i, student in enumerate(first["students"]):
        table3[student["method"]] = summary([r["students"][i]["acc1"] for r in runs.values()])
    heads = []
    for i, head in enumerate(first["heads"]):
        heads.append(
            {
                "labels_per_class": head["labels_per_class"],
                "method": head["method"],
                **{
                    k: statistics.mean(r["heads"][i][k] for r in runs.values())
                    for k in ("class", "distillation", "average")
                },
            }
        )

    print(f"{'labels':>6} {'method':18s} " + " ".join(f"seed {s:<2}" for s in args.seeds) + "    mean  spread")
    for p in curve:
        print(
            f"{p['labels_per_class']:>6} {p['method']:18s} "
            + " ".join(f"{v:7.1f}" for v in p["acc1"])
            + f"   {p['mean']:5.1f}  {p['spread']:5.1f}"
        )
    margins = {}
    at = {(p["labels_per_class"], p["method"]): p for p in curve}
    for n in sorted({p["labels_per_class"] for p in curve}):
        for method in (m for m in STUDY if m != "none"):  # the distilled students
            per_seed = [d - a for d, a in zip(at[n, method]["acc1"], at[n, "none"]["acc1"])]
            to_teacher = [d - t for d, t in zip(at[n, method]["acc1"], at[n, "teacher"]["acc1"])]
            margins[f"{n} {method}"] = {
                "minus_none": per_seed,
                "minus_none_mean": points(statistics.mean(per_seed)),
                "largest_spread": max(at[n, method]["spread"], at[n, "none"]["spread"]),
                "minus_teacher_mean": points(statistics.mean(to_teacher)),
            }
            m = margins[f"{n} {method}"]
            print(
                f"{n} labels, {method}: {m['minus_none_mean']:+.1f} points over the student alone on average "
                f"(per seed {', '.join(f'{v:+.1f}' for v in per_seed)}; largest spread {m['largest_spread']:.1f}), "
                f"{m['minus_teacher_mean']:+.1f} against the teacher"
            )
    for h in heads:
        print(
            f"{h['labels_per_class']} labels, {h['method']}: class head {h['class']:.1f}%, distillation head "
            f"{h['distillation']:.1f}%, average {h['average']:.1f}%"
        )
    record = {
        "benchmark": f"demo_seeds_{name}",
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "data_set": args.data_set,
        "student": first["student"],
        "student_epochs": args.epochs,  # None: the demo's rule
        "seeds": args.seeds,
        "curve": curve,
        "table3": table3,
        "heads": heads,
        "margins": margins,
        "seconds": seconds,  # the whole demo, per seed
        **({"note": args.note} if args.note else {}),
    }
    path = save_record(record, args.out)
    mean_curve = [{**p, "method": curve_label(p["method"]), "acc1": p["mean"]} for p in curve]
    plot_label_curve(
        mean_curve, path.with_suffix(".png"), title=f"{args.data_set}, mean of seeds {', '.join(map(str, args.seeds))}"
    )
    print(f"saved {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
