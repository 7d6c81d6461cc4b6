"""The teacher cache: views replayed from their seeds, the same loss as with the teacher online, wrong caches refused"""

import json

import pytest
import torch
from conftest import FAST, read_log
from timm.data import Mixup

from deit.cli import main
from deit.data import Recipe, build_dataset, train_transform
from deit.data.sampling import SeededDataset, batch_seed, sample_seed, train_sampler
from deit.distill.cache import TeacherCache, epoch_file
from deit.distill.cache_spec import CacheSpec, DataSpec, TeacherSpec, ViewSpec
from deit.engine import Views

# A distilled student with every cached part in play: Mixup/CutMix pairs and lambdas, soft logits, attention maps.
DISTILLED = ["--model", "deit_pico_distilled_patch7_28", *FAST, "--labels-per-class", "16", "--epochs", "2"]
STUDENT = [
    *DISTILLED,
    "--mixup",
    "0.8",
    "--cutmix",
    "1.0",
    "--distillation-type",
    "soft",
    "--distillation-tau",
    "3",
    "--attn-distillation-weight",
    "1.0",
]


def digits_view_set():
    train, info = build_dataset("mnist5k", None, True)
    recipe = Recipe(crop_scale=0.5, reprob=0.5, aa="rand-m6-mstd0.5-inc1", hflip=0.0)
    train.transform = train_transform(28, mean=info.mean, std=info.std, recipe=recipe)
    return SeededDataset(train)


def test_a_view_replayed_from_its_seed_is_the_identical_tensor():
    first, second = digits_view_set(), digits_view_set()  # e.g. the cache's process and a student's
    keys = [(i, sample_seed(3, 5, p), p) for p, i in enumerate([7, 100, 2500, 7])]
    a = torch.stack([first[k][0] for k in keys])
    b = torch.stack([second[k][0] for k in keys[::-1]])[range(3, -1, -1)]  # another order, the same views
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[3])  # the same image at another position is another view
    # and the batch's Mixup/CutMix: pairs, lambda and box from the step's seed
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=10)

    def mixed(step: int) -> torch.Tensor:  # timm mixes in place: a fresh copy of the batch each time
        views = Views(torch.device("cpu"), mixup=mixup, seed=lambda epoch, s: batch_seed(3, epoch, 0, s))
        return views(a.clone(), torch.tensor([1, 2, 3, 1]), 5, step)[0]

    assert torch.equal(mixed(4), mixed(4))
    assert not torch.equal(mixed(4), mixed(5)) and not torch.equal(mixed(4), a)


@pytest.mark.smoke
@pytest.mark.parametrize("batch_aug", [False, True], ids=["per-image", "batch-aug"])
def test_a_cached_run_matches_the_online_teacher(teacher, tmp_path, batch_aug):
    """fp32 cache, k = class count: the same losses, step after step, and the same weights at the end; with views
    made per image in the loader, or per batch (batch augmentation)."""
    student = [*STUDENT, "--batch-aug"] if batch_aug else STUDENT
    base = [*student, "--teacher-path", str(teacher)]
    assert main(["train", *base, "--output_dir", str(tmp_path / "online")]) == 0
    cache = tmp_path / "cache"
    assert main(["cache-teacher", *base, "--teacher-cache", str(cache), "--teacher-cache-dtype", "float32"]) == 0
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["topk"] == 10 and meta["attention"]["grid"] == 4 and meta["views"]["mixup"]["cutmix"] == 1.0
    assert meta["views"]["batch_aug"] == batch_aug
    # the student reads the cache: no teacher weights needed
    assert main(["train", *student, "--teacher-cache", str(cache), "--output_dir", str(tmp_path / "cached")]) == 0
    online, cached = read_log(tmp_path / "online"), read_log(tmp_path / "cached")
    for a, b in zip(online, cached):
        for key in ("train_loss", "base_loss", "distill_loss", "attn_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
        assert b["test_acc1"] == a["test_acc1"]
    w1 = torch.load(tmp_path / "online" / "checkpoint.pth", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "cached" / "checkpoint.pth", weights_only=True)["model"]
    for key in w1:
        assert torch.allclose(w1[key], w2[key], atol=1e-5), key


def test_float16_cache_serves_hard_students_and_other_process_counts(teacher, tmp_path):
    """Without Mixup a cache made by one process serves process `rank` of two: positions are global."""
    args = [
        "--model",
        "deit_pico_distilled_patch7_28",
        *FAST,
        "--labels-per-class",
        "16",
        "--epochs",
        "1",
        "--mixup",
        "0",
        "--cutmix",
        "0",
        "--distillation-type",
        "hard",
        "--teacher-path",
        str(teacher),
    ]
    cache = tmp_path / "cache"
    assert main(["cache-teacher", *args, "--teacher-cache", str(cache), "--teacher-cache-topk", "1"]) == 0
    assert (cache / epoch_file(0, 0)).stat().st_size < 10_000  # 160 views: one class and one logit each
    sampler = train_sampler(range(160), seed=0, rank=1, world_size=2, repeated_aug=False)  # its epoch-0 order
    keys = list(sampler)
    opened = TeacherCache(cache, json.loads((cache / "meta.json").read_text()))
    opened._load(0)
    rows = opened._rows[torch.tensor([p for _, _, p in keys])]
    assert bool((rows >= 0).all())  # every position of process 1 of 2 is in the one-process cache
    assert torch.equal(opened._data["indices"][rows].long(), torch.tensor([i for i, _, _ in keys]))
    assert main(["train", *args, "--teacher-cache", str(cache), "--output_dir", str(tmp_path / "s")]) == 0
    assert read_log(tmp_path / "s")[0]["distill_loss"] > 0


def test_a_cache_made_for_another_run_is_refused(teacher, tmp_path, capsys):
    base = [*STUDENT, "--epochs", "1"]
    cache = tmp_path / "cache"
    assert main(["cache-teacher", *base, "--teacher-path", str(teacher), "--teacher-cache", str(cache)]) == 0

    def refused(*args: str) -> str:
        code = main(["train", *base, *args, "--teacher-cache", str(cache), "--output_dir", str(tmp_path / "x")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        return err

    assert "views transform" in refused("--crop-scale", "0.9")
    assert "views seed" in refused("--seed", "1")
    assert "views mixup" in refused("--mixup", "0.5")
    assert "data size" in refused("--labels-per-class", "17")
    assert "needs 2" in refused("--epochs", "2")
    assert "attention" in refused("--attn-distillation-layers=-2")
    other = tmp_path / "other_teacher"
    assert (
        main(
            [
                "train",
                "--model",
                "small_cnn",
                *FAST,
                "--labels-per-class",
                "10",
                "--epochs",
                "1",
                "--output_dir",
                str(other),
            ]
        )
        == 0
    )
    assert "teacher weights" in refused("--teacher-path", str(other))
    # views that differ although the settings match (e.g. another library version): stopped at the first batch
    rewritten(cache, lambda tensors: tensors["checksums"].add_(1.0))
    assert "augmented images differ" in refused()


def test_an_unfinished_cache_is_completed_or_refused(teacher, tmp_path, capsys):
    base = [*STUDENT, "--teacher-cache", str(tmp_path / "cache")]
    assert main(["cache-teacher", *base, "--teacher-path", str(teacher)]) == 0
    first = (tmp_path / "cache" / epoch_file(0, 0)).read_bytes()
    (tmp_path / "cache" / epoch_file(1, 0)).unlink()  # as if interrupted during epoch 1
    assert main(["train", *base, "--output_dir", str(tmp_path / "s")]) == 2
    assert "lacks epoch 1" in capsys.readouterr().err
    assert main(["cache-teacher", *base, "--teacher-path", str(teacher)]) == 0
    assert (tmp_path / "cache" / epoch_file(1, 0)).exists()
    assert (tmp_path / "cache" / epoch_file(0, 0)).read_bytes() == first  # finished epochs are kept as they were


def test_cache_spec_names_a_teacher_that_sees_resized_views():
    # a cache made while the teacher saw the views at its own size is refused by a run whose teacher did not
    from deit.caching import cache_spec
    from deit.config import TrainConfig
    from deit.teachers import SmallCNN, Teacher

    train, _ = build_dataset("digits", None, True)
    cfg = TrainConfig.from_dict({"distill": {"distillation_type": "hard"}})
    cnn = SmallCNN()
    specs = {
        size: cache_spec(cfg, train, 10, Teacher(cnn, "small_cnn", 10, size), None, 1, img_size=28)
        for size in (None, 28, 8)
    }
    assert specs[None].teacher == specs[28].teacher and "input_size" not in specs[28].sections()["teacher"]
    assert specs[8].sections()["teacher"]["input_size"] == 8


@pytest.mark.smoke
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_checksums_writes_and_lookups_ignore_the_callers_autocast(tmp_path, dtype):
    """A benchmark looked a cache up under bf16 autocast and stopped ('BFloat16 did not match Float'; on the CPU a
    float16 cache's tensors could not even be joined): the checksum, what is stored and what is read back are the
    same numbers whatever autocast the caller writes and reads under."""
    from contextlib import nullcontext
    from itertools import product

    from deit.distill.cache import view_checksum

    def amp(on: bool):
        return torch.autocast("cpu", dtype=torch.bfloat16) if on else nullcontext()

    views, logits = torch.randn(6, 3, 16, 16), torch.randn(6, 10)
    positions = indices = torch.arange(6)
    plain = view_checksum(views)
    stored = logits.to(getattr(torch, dtype)).float()  # k = the class count: every logit, at the cache's precision
    spec = CacheSpec(
        data=DataSpec("random", 6, 10),
        views=ViewSpec(seed=0, batch_size=6),
        teacher=TeacherSpec("small_cnn"),
        dtype=dtype,
        distillation_type="soft",
    )
    for write_amp, read_amp in product((False, True), repeat=2):
        cache = TeacherCache.open_or_create(tmp_path / f"{write_amp}{read_amp}", spec, create=True)
        with amp(write_amp):
            assert torch.equal(view_checksum(views), plain) and plain.dtype == torch.float32
            entries = cache.entries(positions, indices, views, logits, None)
            cache.write_epoch(0, 0, [entries])
        assert torch.equal(entries["checksums"], plain)
        with amp(read_amp):
            read, maps = cache.lookup(0, positions, indices, views)
        assert maps is None and read.dtype == torch.float32 and torch.equal(read, stored), (write_amp, read_amp)


# -- what a cache's files may hold: each refused in one line naming the file, never an internal error ------------------
HARD = [*DISTILLED, "--mixup", "0", "--cutmix", "0", "--distillation-type", "hard"]


@pytest.fixture
def made(teacher, tmp_path):
    """A finished 2-epoch cache (160 views an epoch, top 10 of 10 classes), and a function running a student on it:
    (exit code, stderr)."""
    cache = tmp_path / "cache"
    assert main(["cache-teacher", *HARD, "--teacher-path", str(teacher), "--teacher-cache", str(cache)]) == 0
    runs = iter(range(100))

    def student(capsys) -> tuple[int, str]:
        out = tmp_path / f"student{next(runs)}"
        code = main(["train", *HARD, "--teacher-cache", str(cache), "--output_dir", str(out)])
        return code, capsys.readouterr().err.strip()

    return cache, student


def refused_naming(student, capsys, name: str) -> str:
    code, err = student(capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert name in err and "deit cache-teacher" in err and "internal error" not in err, err
    return err


def test_an_edited_or_truncated_epoch_file_is_refused_by_its_digest(made, capsys):
    """The probe's edits: the classes of one view changed (the file still valid safetensors; saved plainly, or with
    the original file's metadata kept), a byte of the data flipped, the file cut short; and another epoch's intact
    file in its place. The student trained on them before (or stopped with an internal error)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    cache, student = made
    path = cache / epoch_file(0, 0)
    intact = path.read_bytes()
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()

    tensors = load_file(str(path))
    tensors["classes"][0, 0] = (tensors["classes"][0, 0] + 1) % 10
    save_file(tensors, str(path))
    refused_naming(student, capsys, epoch_file(0, 0))
    save_file(tensors, str(path), metadata=metadata)
    assert "digest" in refused_naming(student, capsys, epoch_file(0, 0))
    flipped = bytearray(intact)
    flipped[-1] ^= 1
    path.write_bytes(bytes(flipped))
    assert "digest" in refused_naming(student, capsys, epoch_file(0, 0))
    path.write_bytes(intact[: len(intact) // 2])
    refused_naming(student, capsys, epoch_file(0, 0))
    path.write_bytes((cache / epoch_file(1, 0)).read_bytes())
    assert "epoch 1" in refused_naming(student, capsys, epoch_file(0, 0))
    path.write_bytes(intact)  # and the intact file serves again
    assert student(capsys)[0] == 0


def rewritten(cache, change) -> None:
    """Epoch 0 rewritten by the cache's own writer after `change(tensors)`: its digest matches what it holds."""
    from safetensors.torch import load_file

    opened = TeacherCache(cache, json.loads((cache / "meta.json").read_text()))
    tensors = load_file(str(cache / epoch_file(0, 0)))
    change(tensors)
    opened.write_epoch(0, 0, [tensors])


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda t: t["classes"].__setitem__((3, 0), 10), "classes"),  # class 10 of 10: out of range
        (lambda t: t["classes"].__setitem__((3, 0), -1), "classes"),
        (lambda t: t["positions"].__setitem__(5, 2**31 - 1), "positions"),  # a 16 GB lookup table
        (lambda t: t["positions"].__setitem__(5, -7), "positions"),
        (lambda t: t.__setitem__("values", t["values"][:-1]), "values"),  # fewer rows than positions
        (lambda t: t.__setitem__("values", t["values"][:, :4]), "values"),  # top 4, the cache says 10
        (lambda t: t.__setitem__("values", t["values"].double()), "values"),
        (lambda t: t.__setitem__("classes", t["classes"].float()), "classes"),
        (lambda t: t.__setitem__("map0", t["values"]), "map0"),  # maps in a cache made without them
        (lambda t: t.pop("checksums"), "checksums"),
    ],
    ids=[
        "class-10",
        "class-neg",
        "position-huge",
        "position-neg",
        "rows",
        "topk",
        "dtype",
        "int-dtype",
        "extra",
        "missing",
    ],
)
def test_what_a_file_with_a_matching_digest_holds_is_still_checked(made, capsys, change, named):
    """A digest proves the file is the one written, not that its writer was ours: names, dtypes, shapes and the
    classes' and positions' ranges are checked before a value is used as an index."""
    cache, student = made
    rewritten(cache, change)
    assert named in refused_naming(student, capsys, epoch_file(0, 0))


def test_a_file_larger_than_its_epoch_can_be_is_refused_before_it_is_read(made, capsys, monkeypatch):
    import safetensors.torch

    cache, student = made
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("read"))
    with open(cache / epoch_file(0, 0), "r+b") as f:
        f.truncate(10**10)  # sparse: 10 GB that take no disk
    assert "bytes" in refused_naming(student, capsys, epoch_file(0, 0))


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.__setitem__("epochs", "2"),
        lambda m: m.__setitem__("topk", 10**9),
        lambda m: m.__setitem__("dtype", "float64"),
        lambda m: m["views"].__setitem__("world_size", 10**9),  # a billion file names looked up an epoch
        lambda m: m.__setitem__("attention", {"blocks": "x"}),
        lambda m: m.clear(),
    ],
    ids=["epochs", "topk", "dtype", "world-size", "attention", "empty"],
)
def test_a_meta_json_out_of_bounds_is_refused_in_one_line(made, capsys, edit):
    cache, student = made
    meta = json.loads((cache / "meta.json").read_text())
    edit(meta)
    (cache / "meta.json").write_text(json.dumps(meta))
    code, err = student(capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "meta.json" in err and "internal error" not in err, err


def test_a_meta_json_too_large_is_refused_before_it_is_read(made, capsys):
    cache, student = made
    (cache / "meta.json").write_text("[" * 2_000_000)
    code, err = student(capsys)
    assert code == 2 and "meta.json" in err and "bytes" in err, err


def test_a_cache_made_before_digests_serves_with_a_warning_and_its_bounds(made, capsys, caplog):
    """Version 3 (no digests): kept, since remaking it costs the teacher's pass over every epoch; the student is
    told once that an edit would go unseen, and everything but the digest is still checked."""
    from safetensors.torch import load_file, save_file

    cache, student = made
    meta = json.loads((cache / "meta.json").read_text())
    (cache / "meta.json").write_text(json.dumps({**meta, "version": 3}))
    for e in range(2):
        path = cache / epoch_file(e, 0)
        save_file(load_file(str(path)), str(path))  # as version 3 wrote them: no metadata
    assert student(capsys)[0] == 0
    warned = [r.getMessage() for r in caplog.records if "digest" in r.getMessage()]
    assert len(warned) == 1 and "deit cache-teacher" in warned[0], warned
    tensors = load_file(str(cache / epoch_file(0, 0)))
    tensors["classes"][0, 0] = 10
    save_file(tensors, str(cache / epoch_file(0, 0)))
    assert "classes" in refused_naming(student, capsys, epoch_file(0, 0))


def test_a_second_maker_started_at_the_same_instant_is_refused_naming_the_first(teacher, tmp_path, monkeypatch):
    """The race, made deterministic: a second `deit cache-teacher` (another process) and a student start while the
    first is writing the new cache's meta.json, the folder holding only the first's files. The second used to be
    told the folder 'holds no teacher cache'."""
    import os
    import subprocess
    import sys

    import deit.distill.cache as cache_module

    cache = tmp_path / "cache"
    args = [*HARD, "--epochs", "1", "--teacher-cache", str(cache)]
    others = {}
    real_write = cache_module.atomic_write

    def deit(*argv: str) -> subprocess.CompletedProcess:
        code = "import sys; from deit.cli import main; sys.exit(main(sys.argv[1:]))"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True)

    def write_then_race(path, write):
        def racing(tmp):
            write(tmp)
            if path.name == "meta.json" and not others:  # the temporary file is there, meta.json not yet
                others["maker"] = deit("cache-teacher", *args, "--teacher-path", str(teacher))
                others["student"] = deit("train", *args, "--output_dir", str(tmp_path / "s"))

        real_write(path, racing)

    monkeypatch.setattr(cache_module, "atomic_write", write_then_race)
    assert main(["cache-teacher", *args, "--teacher-path", str(teacher)]) == 0
    for name, result in others.items():
        err = result.stderr.strip()
        assert result.returncode == 2 and len(err.splitlines()) == 1, (name, err)
        assert f"deit cache-teacher (pid {os.getpid()} on " in err and "holds no teacher cache" not in err, err
    monkeypatch.undo()
    assert main(["train", *args, "--output_dir", str(tmp_path / "after")]) == 0  # the first's cache is whole
