"""WebDataset shards: `deit shard` round trip and resume, the index's checks, and which samples each process and
loader worker streams in an epoch."""

import collections
import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from deit.cli import main
from deit.data import build_dataset
from deit.data.loaders import cache_loader, eval_loader, loader_options, train_loader, training_order
from deit.data.shards import index as shard_index
from deit.data.shards import streams as shard_streams
from deit.data.shards import writer as shard_writer
from deit.data.shards.index import INDEX, open_split
from deit.data.shards.streams import ShardSet, eval_span, pieces, shard_order, train_span, train_steps
from deit.data.shards.tar import count_samples
from deit.data.shards.writer import parse_size


def write_images(root: Path, per_class: dict[str, int], seed: int = 0) -> dict[str, bytes]:
    """Class folders of PNG, 16-bit PNG and JPEG files of varied sizes; returns {relative path: file bytes}."""
    rng = np.random.default_rng(seed)
    files = {}
    for name, count in per_class.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            side = int(rng.integers(8, 40))
            kind = i % 3
            if kind == 0:
                image, ext = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)), "png"
            elif kind == 1:
                image, ext = Image.fromarray(rng.integers(0, 65535, (side, side), dtype=np.uint16)), "png"
            else:
                image, ext = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)), "jpg"
            path = root / name / f"img.{i}.{ext}"  # a dot in the stem: keys must not hold one
            image.save(path)
            files[f"{name}/{path.name}"] = path.read_bytes()
    return files


def tar_samples(path: Path) -> list[dict]:
    return list(wds.tarfile_to_samples()(iter([{"url": str(path)}])))


def test_folder_to_shards_round_trip(tmp_path, capsys):
    src = tmp_path / "src"
    train = write_images(src / "train", {"ant": 7, "bee": 11, "cat": 5})
    val = write_images(src / "val", {"ant": 2, "bee": 3, "cat": 4}, seed=1)
    out = tmp_path / "shards"
    assert main(["shard", str(src), str(out), "--shard-size", "12KB"]) == 0
    assert "train: 23 images of 3 classes in" in capsys.readouterr().out
    index = json.loads((out / INDEX).read_text())
    assert index["class_names"] == ["ant", "bee", "cat"]
    for split, files in (("train", train), ("val", val)):
        entry = index["splits"][split]
        written = collections.Counter()
        for shard in entry["shards"]:
            samples = tar_samples(out / shard["name"])
            assert len(samples) == shard["samples"] == count_samples(out / shard["name"])[0]
            assert shard["bytes"] == (out / shard["name"]).stat().st_size
            for s in samples:
                ext = next(k for k in ("png", "jpg") if k in s)
                written[(s[ext], index["class_names"][int(s["cls"])])] += 1
        expected = collections.Counter((data, name.split("/")[0]) for name, data in files.items())
        assert written == expected  # the files' own bytes, each once, with its class
        assert entry["samples"] == len(files)
        assert entry["class_counts"] == [sum(n.startswith(c + "/") for n in files) for c in index["class_names"]]
    assert len(index["splits"]["train"]["shards"]) >= 3  # 12 KB shards: the 23 images span several
    # the samples are shuffled across shards: the first shard holds more than one class
    first = tar_samples(out / index["splits"]["train"]["shards"][0]["name"])
    assert len({int(s["cls"]) for s in first}) > 1 or len(first) == 1


def test_an_interrupted_shard_run_keeps_its_finished_shards(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_images(src, {"a": 9, "b": 9})
    whole = tmp_path / "whole"
    assert main(["shard", str(src), str(whole), "--shard-size", "8KB", "--split", "train"]) == 0
    names = [s["name"] for s in json.loads((whole / INDEX).read_text())["splits"]["train"]["shards"]]
    assert len(names) >= 4

    real = wds.TarWriter
    opened = []

    def dies_on_the_third(*args, **kwargs):
        opened.append(1)
        if len(opened) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(wds, "TarWriter", dies_on_the_third)
    split = tmp_path / "split"
    assert main(["shard", str(src), str(split), "--shard-size", "8KB", "--split", "train"]) == 130  # Ctrl-C
    kept = {p.name: p.stat().st_mtime_ns for p in split.glob("*.tar")}
    assert sorted(kept) == names[:2] and not (split / INDEX).exists()
    assert not [p for p in split.iterdir() if p.name.endswith(".tmp")]  # no half-written shard left

    monkeypatch.setattr(wds, "TarWriter", real)
    opened.clear()
    assert main(["shard", str(src), str(split), "--shard-size", "8KB", "--split", "train"]) == 0
    assert {n: (split / n).stat().st_mtime_ns for n in names[:2]} == kept  # kept, not written again
    for name in names:  # the same shards as the uninterrupted run, byte for byte
        assert (split / name).read_bytes() == (whole / name).read_bytes()
    assert json.loads((split / INDEX).read_text()) == json.loads((whole / INDEX).read_text())

    # other settings into the same folder: refused, nothing touched
    code = main(["shard", str(src), str(split), "--shard-size", "4KB", "--split", "train"])
    assert code == 2


def test_built_in_sets_shard_as_png(tmp_path):
    out = tmp_path / "digits"
    assert main(["shard", "digits", str(out), "--shard-size", "64KB"]) == 0
    index = json.loads((out / INDEX).read_text())
    assert index["splits"]["train"]["samples"] == 1437 and index["splits"]["val"]["samples"] == 360
    reference, _ = build_dataset("digits", None, False)
    shards, info = build_dataset("wds", str(out), False, grayscale=True)
    assert info.num_classes == 10 and len(shards) == 360
    pngs = collections.Counter()
    for s in shards.split.shards:
        for sample in tar_samples(Path(s.path)):
            pngs[(np.asarray(Image.open(io.BytesIO(sample["png"]))).tobytes(), int(sample["cls"]))] += 1
    assert pngs == collections.Counter((im.tobytes(), t) for im, t in zip(reference.images, reference.targets))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: i.update(format="other"), "not a deit-shards index"),
        (lambda i: i.update(version=9), "version 9"),
        (lambda i: i.update(class_names=["a"]), "at least two"),
        (lambda i: i.update(class_names=["a", "a"]), "repeat a name"),
        (lambda i: i["splits"]["train"]["shards"][0].update(name="../../etc/passwd.tar"), "not a plain .tar"),
        (lambda i: i["splits"]["train"]["shards"][0].update(name="/abs.tar"), "not a plain .tar"),
        (lambda i: i["splits"]["train"]["shards"][0].update(samples=-3), "not a count"),
        (lambda i: i["splits"]["train"]["shards"][0].update(samples="7"), "not a count"),
        (lambda i: i["splits"]["train"].update(samples=10**6), "not the sum"),
        (lambda i: i["splits"].update(test=i["splits"]["train"]), "splits must map"),
    ],
)
def test_a_hostile_or_damaged_index_is_one_line(tmp_path, capsys, change, message):
    src = tmp_path / "src"
    write_images(src, {"a": 3, "b": 3})
    out = tmp_path / "out"
    assert main(["shard", str(src), str(out), "--split", "train"]) == 0
    index = json.loads((out / INDEX).read_text())
    change(index)
    (out / INDEX).write_text(json.dumps(index))
    capsys.readouterr()
    code = main(["train", "--model", "deit_pico_patch4_28", "--data-set", "wds", "--data-path", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match=message):
        open_split(str(out), "train")


def test_missing_shards_and_splits_are_named(tmp_path):
    src = tmp_path / "src"
    write_images(src, {"a": 3, "b": 3})
    out = tmp_path / "out"
    assert main(["shard", str(src), str(out), "--split", "train"]) == 0
    with pytest.raises(ValueError, match="has no val split"):
        open_split(str(out), "val")
    with pytest.raises(ValueError, match="no index.json in"):
        open_split(str(tmp_path), "train")
    with pytest.raises(ValueError, match="not found"):
        open_split(str(out / "train-{000000..000009}.tar"), "train")
    (out / "train-000000.tar").unlink()
    with pytest.raises(ValueError, match="which is missing"):
        open_split(str(out), "train")


def test_parse_size():
    assert parse_size("256MB") == 256 * 10**6
    assert parse_size("1GiB") == 2**30
    assert parse_size("1.5k") == 1500
    for bad in ("big", "12", "-5MB"):
        with pytest.raises(ValueError, match="shard size"):
            parse_size(bad)


# -- which samples each process and worker reads ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=8),
    world=st.integers(1, 4),
    workers=st.integers(1, 4),
    batch=st.integers(1, 9),
)
def test_spans_cover_each_sample_once(sizes, world, workers, batch):
    n = sum(sizes)
    steps = train_steps(n, world, batch)
    taken = []
    for rank in range(world):
        for worker in range(workers):
            a, b = train_span(n, rank, world, batch, worker, workers)
            assert (b - a) % batch == 0  # whole batches only
            taken += range(a, b)
        spans = [eval_span(n, rank, world, w, workers) for w in range(workers)]
        assert all(a <= b for a, b in spans)
    assert sorted(taken) == list(range(steps * world * batch))  # the epoch's first steps x world x batch, once
    every = [i for r in range(world) for w in range(workers) for i in range(*eval_span(n, r, world, w, workers))]
    assert sorted(every) == list(range(n))
    order = shard_order(len(sizes), 3, 1)
    ordered = [sizes[i] for i in order]
    lo, hi = sorted(np.random.default_rng(n).integers(0, n + 1, 2).tolist())
    runs = pieces(ordered, lo, hi)
    assert sum(end - first for _, first, end in runs) == hi - lo
    assert all(0 <= first < end <= ordered[place] for place, first, end in runs)


def make_shards(tmp_path: Path, sizes: list[int]) -> str:
    """Shards of the given sample counts (tiny PNGs); each sample's pixel value says its id."""
    out = tmp_path / "uneven"
    out.mkdir()
    entries, labels, ident = [], [], 0
    for k, size in enumerate(sizes):
        name = f"train-{k:06d}.tar"
        with wds.TarWriter(str(out / name), encoder=False) as tar:
            for _ in range(size):
                buffer = io.BytesIO()
                Image.fromarray(np.full((4, 4), ident % 256, np.uint8)).save(buffer, format="PNG")
                tar.write({"__key__": f"s{ident:05d}", "png": buffer.getvalue(), "cls": str(ident % 3).encode()})
                labels.append(ident % 3)
                ident += 1
        entries.append({"name": name, "samples": size})
    split = {"shards": entries, "samples": sum(sizes), "labels_digest": shard_index.labels_digest(labels)}
    index = {"format": "deit-shards", "version": 1, "class_names": ["x", "y", "z"], "splits": {"train": split}}
    (out / INDEX).write_text(json.dumps(index))
    return str(out)


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).float()[None]


def epoch_ids(folder: str, *, world: int, workers: int, batch: int, epoch: int, repeated_aug=False, shuffle=16):
    """Per rank: the (position, id) of every view of one epoch, in the order the loader gives them."""
    out = []
    for rank in range(world):
        shards, _ = build_dataset("wds", folder, True, grayscale=True)
        shards.transform = as_tensor
        sampler = training_order(
            shards, seed=5, rank=rank, world_size=world, repeated_aug=repeated_aug, shuffle_buffer=shuffle
        )
        sampler.set_epoch(epoch)
        options = loader_options(workers, pin_memory=False)
        batches = list(train_loader(shards, sampler, batch_size=batch, batch_aug=False, options=options))
        assert len(batches) == len(train_loader(shards, sampler, batch_size=batch, batch_aug=False, options=options))
        for b in batches:
            assert len(b.indices) == batch
            # the image is the sample's own (its pixel value is its id, mod 256), but for a stand-in for an
            # unreadable one
            own = b.skipped == 0
            assert torch.equal(b.images.flatten(1)[own, 0].round().long(), b.indices[own] % 256)
        out.append([(int(p), int(i)) for b in batches for p, i in zip(b.positions, b.indices)])
    return out


def test_two_ranks_two_workers_see_each_sample_once(tmp_path):
    folder = make_shards(tmp_path, [13, 2, 29, 7, 21])  # 72 samples = 2 ranks x 4 steps x batch 9
    epochs = []
    for epoch in (0, 1):
        ranks = epoch_ids(folder, world=2, workers=2, batch=9, epoch=epoch)
        assert [len(r) for r in ranks] == [36, 36]  # the same steps on both ranks
        ids = sorted(i for r in ranks for _, i in r)
        assert ids == list(range(72))  # every sample once
        assert all(p == i for r in ranks for p, i in r)  # a view's position (its seed) is its id
        epochs.append(ranks)
    assert epochs[0] != epochs[1]  # another order every epoch
    assert epoch_ids(folder, world=2, workers=2, batch=9, epoch=1) == epochs[1]  # and the same again


def test_uneven_totals_drop_a_tail_and_repeated_augmentation_keeps_the_length(tmp_path):
    folder = make_shards(tmp_path, [13, 2, 29, 7, 22])  # 73 samples
    ranks = epoch_ids(folder, world=2, workers=2, batch=5, epoch=0)
    assert [len(r) for r in ranks] == [35, 35]  # 73 // 10 = 7 steps each
    ids = [i for r in ranks for _, i in r]
    assert len(set(ids)) == len(ids) == 70
    ranks = epoch_ids(folder, world=2, workers=1, batch=5, epoch=0, repeated_aug=True)
    views = [v for r in ranks for v in r]
    assert len(views) == 70 and len(set(views)) == 70  # each view its own position
    copies = collections.Counter(i for _, i in views)
    assert set(copies.values()) <= {1, 2, 3} and sum(v == 3 for v in copies.values()) >= 20
    assert all(p % 73 == i for p, i in views)  # position = copy x samples + id


def test_a_damaged_shard_keeps_the_epoch_length(tmp_path, caplog):
    folder = make_shards(tmp_path, [10, 10, 10])
    path = Path(folder) / "train-000001.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut in the middle
    ranks = epoch_ids(folder, world=1, workers=0, batch=5, epoch=0, shuffle=0)  # warnings in this process
    assert len(ranks[0]) == 30 and sorted(i for _, i in ranks[0]) == list(range(30))
    assert "ended after" in caplog.text and "train-000001.tar" in caplog.text
    # evaluation leaves them out and counts them
    shards, _ = build_dataset("wds", f"{folder}/train-{{000000..000002}}.tar", False, grayscale=True)
    loader = eval_loader(
        shards,
        img_size=4,
        mean=(0.5,),
        std=(0.5,),
        interpolation="bicubic",
        crop_ratio=1.0,
        batch_size=4,
        rank=0,
        world_size=1,
        options=loader_options(0, False),
    )
    batches = list(loader)
    seen = sum(len(t) for _, t, _ in batches if t is not None)
    unreadable = sum(int(u) for _, _, u in batches)
    assert seen + unreadable == 30 and 0 < unreadable < 10


def test_cache_stream_covers_every_sample_with_the_training_views(tmp_path):
    folder = make_shards(tmp_path, [13, 2, 29, 7, 21])
    shards, _ = build_dataset("wds", folder, True, grayscale=True)
    from deit.data.transforms import Recipe, train_transform

    shards.transform = train_transform(4, mean=(0.5,), std=(0.5,), recipe=Recipe(crop_scale=0.3, hflip=0.5))
    views = {}
    for rank in range(2):
        sampler = training_order(shards, seed=5, rank=rank, world_size=2, repeated_aug=False)
        sampler.set_epoch(3)
        options = loader_options(2, pin_memory=False)
        for b in train_loader(shards, sampler, batch_size=9, batch_aug=False, options=options):
            views.update({int(p): img for p, img in zip(b.positions, b.images)})
    sampler = training_order(shards, seed=5, rank=0, world_size=1, repeated_aug=False)
    sampler.set_epoch(3)
    cached = {}
    for b in cache_loader(shards, sampler, batch_size=9, options=loader_options(0, pin_memory=False)):
        cached.update({int(p): img for p, img in zip(b.positions, b.images)})
    assert sorted(cached) == list(range(72))
    for position, view in views.items():  # the same view of each sample in any layout
        assert torch.equal(view, cached[position])


def test_counted_pattern_without_index(tmp_path):
    folder = Path(make_shards(tmp_path, [4, 6]))
    (folder / INDEX).unlink()
    split = open_split(str(folder / "train-{000000..000001}.tar"), "train")
    assert [s.samples for s in split.shards] == [4, 6] and split.class_names == ["0", "1", "2"]
    with tarfile.open(folder / "bad.tar", "w"):
        pass
    assert count_samples(folder / "bad.tar")[0] == 0
    (folder / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ValueError, match="not a readable tar shard"):
        open_split(str(folder / "junk.tar"), "train")


def test_wds_refuses_what_it_cannot_do(tmp_path):
    folder = make_shards(tmp_path, [4, 6])
    with pytest.raises(ValueError, match="shard the subset"):
        build_dataset("wds", folder, True, labels_per_class=2)
    with pytest.raises(ValueError, match="needs --data-path"):
        build_dataset("wds", None, True)
    assert isinstance(build_dataset("wds", folder, True)[0], ShardSet)


def test_two_gloo_processes_with_two_workers_each_see_every_sample_once(tmp_path):
    """The acceptance check: 2 processes (torch.distributed.run, gloo) x 2 loader workers over 5 shards of uneven
    size; the ids of every step are logged by each process (tests/data/shard_ranks.py)."""
    sizes = [17, 3, 26, 9, 17]  # 72 samples = 2 processes x 6 steps x batch 6
    folder = make_shards(tmp_path, sizes)
    out = tmp_path / "ids"
    out.mkdir()
    script = Path(__file__).with_name("shard_ranks.py")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29531",
            str(script),
            folder,
            str(out),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((out / f"rank_{r}.json").read_text()) for r in range(2)]
    orders = []
    for epoch in range(2):
        steps = [ranks[r][epoch]["steps"] for r in range(2)]
        assert len(steps[0]) == len(steps[1]) == ranks[0][epoch]["declared"] == 6  # in step, as declared
        ids = [i for r in steps for step in r for i in step]
        assert sorted(ids) == list(range(72)), collections.Counter(ids).most_common(3)  # each sample once
        assert all(ranks[r][epoch]["pixels_match"] for r in range(2))
        orders.append(steps)
    assert orders[0] != orders[1]  # each epoch its own order


def test_a_reader_starting_inside_a_shard_seeks_to_the_same_samples(tmp_path, monkeypatch):
    for module in (shard_index, shard_writer, shard_streams):  # the writer's spacing, and the reader's
        monkeypatch.setattr(module, "SEEK_EVERY", 4)
    src = tmp_path / "src"
    write_images(src, {"a": 14, "b": 13})
    out = tmp_path / "out"
    assert main(["shard", str(src), str(out), "--split", "train"]) == 0  # one shard of 27
    index = json.loads((out / INDEX).read_text())
    shard = index["splits"]["train"]["shards"][0]
    assert index["splits"]["train"]["seek_every"] == 4 and len(shard["seeks"]) == 7
    with tarfile.open(out / shard["name"]) as tar:  # each offset is where a sample's first member begins
        starts = {m.offset for m in tar.getmembers() if m.name.endswith(".cls")}
    assert set(shard["seeks"]) <= starts
    seeking = ShardSet(open_split(str(out), "train"), grayscale=False)
    plain = ShardSet(open_split(str(out), "train"), grayscale=False)
    plain.split.shards = [dataclasses.replace(s, seeks=()) for s in plain.split.shards]
    for first, end in ((0, 27), (5, 9), (8, 27), (13, 14), (26, 27), (24, 30)):
        got = [(i, s and s["__key__"], s and s.get("png", s.get("jpg"))) for i, s in seeking.read(0, first, end)]
        want = [(i, s and s["__key__"], s and s.get("png", s.get("jpg"))) for i, s in plain.read(0, first, end)]
        assert got == want and [i for i, *_ in got] == list(range(first, end))
