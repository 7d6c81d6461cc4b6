"""Shards under hostile input: every size a user's files or patterns state is checked against a bound before it is
acted on (docs/safety.md's table), and no sample is dropped without a word."""

import io
import json
import os
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from braceexpand import braceexpand
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from deit.cli import main
from deit.data.shards.index import INDEX, MAX_CLASSES, MAX_INDEX_BYTES, MAX_SHARDS, open_split, pattern_count
from deit.data.shards.tar import MAX_HEADER_BYTES, MAX_MEMBER_BYTES, Tally, count_samples, tar_samples

DEIT = [sys.executable, "-m", "deit"]
MEMORY = 1536 * 2**20  # the heap a bounded command is given: a tenth of what the probes' patterns and members took


def bounded(argv: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """`deit ARGV` in a process whose heap is capped (RLIMIT_DATA) at MEMORY: past it, an allocation fails."""

    def cap():
        resource.setrlimit(resource.RLIMIT_DATA, (MEMORY, MEMORY))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        DEIT + argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, preexec_fn=cap, env=env
    )


def one_line(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and all(n in lines[0] for n in needles), lines
    return lines[0]


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def samples(names: list[str]) -> list[tuple[str, bytes]]:
    return [m for i, key in enumerate(names) for m in ((f"{key}.png", png(i * 5)), (f"{key}.cls", b"%d" % (i % 2)))]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    """A trained 1-epoch model and the digits written as shards (the probe's RUN and base)."""
    root = tmp_path_factory.mktemp("bounds")
    assert main(["shard", "digits", str(root / "base"), "--shard-size", "100KB"]) == 0
    argv = ["train", "--model", "deit_pico_patch7_28", "--data-set", "digits", "--epochs", "1"]
    assert main([*argv, "--output_dir", str(root / "run"), "--num_workers", "0"]) == 0
    return root / "run", root / "base"


# -- brace patterns -------------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([*"{},.\\a0-9Z", "..", "{1..3}", "{a..c}", "{0..4..2}", "{08..10}"]), max_size=12))
def test_a_pattern_is_counted_as_braceexpand_expands_it(parts):
    pattern = "".join(parts)
    try:
        expected = len(list(braceexpand(pattern)))
    except ValueError:  # unbalanced braces
        expected = None
    try:
        counted = pattern_count(pattern)
    except ValueError:
        counted = None
    assert counted == expected


def test_a_pattern_naming_a_billion_shards_is_refused_before_it_is_expanded(digits):
    _, base = digits
    pattern = str(base / "train-{000000..999999999}.tar")
    argv = ["train", "--model", "deit_pico_patch7_28", "--data-set", "wds", "--data-path", pattern]
    one_line(bounded(argv, base.parent), 2, "1,000,000,000 files", f"{MAX_SHARDS:,}")
    one_line(bounded(["predict", "--weights", "run", pattern], base.parent), 2, "1,000,000,000 files")
    with pytest.raises(ValueError, match="more than 32 levels"):
        pattern_count("{" * 40 + "a,b" + "}" * 40)


def test_a_pattern_naming_a_shard_twice_is_refused(digits):
    _, base = digits
    with pytest.raises(ValueError, match="twice"):
        open_split(str(base / "train-{000000,000001,000000}.tar"), "train")


# -- tar members --------------------------------------------------------------------------------------------------


def test_a_member_larger_than_any_image_is_refused_by_its_header(digits):
    """A 1 GiB member (a sparse file: no disk used) among 4 samples: the others are predicted, the big one named,
    and nothing near its size is ever held (the heap is capped below it)."""
    run, base = digits
    big = base.parent / "big.tar"
    size = 2**30
    with open(big, "wb") as f:
        for name, data in [*samples(["a", "b"]), ("c.png", None), *samples(["d"])]:
            info = tarfile.TarInfo(name)
            info.size = size if data is None else len(data)
            f.write(info.tobuf(tarfile.PAX_FORMAT))
            if data is None:
                f.seek(size, os.SEEK_CUR)  # the member's data: a hole
            else:
                f.write(data + bytes(-len(data) % 512))
        f.write(bytes(1024))  # the end-of-archive blocks
    assert size > MAX_MEMBER_BYTES
    result = bounded(["predict", "--weights", str(run), str(big), "--json"], base.parent)
    rows = [json.loads(line)["path"] for line in result.stdout.splitlines()]
    assert result.returncode == 1 and [r.rsplit(":", 1)[1] for r in rows] == ["a.png", "b.png", "d.png"]
    assert "c: its png member of 1,073,741,824 bytes, over the" in result.stderr and "Traceback" not in result.stderr
    # training and evaluation see the sample, and leave it out with the same words
    tally = Tally()
    got = list(tar_samples(str(big), tally=tally))
    assert [s["__key__"] for s in got] == ["a", "b", "c", "d"] and got[2]["png"] is None and tally.oversized == 1


def test_a_long_member_header_is_bounded(tmp_path):
    path = tmp_path / "long.tar"
    write_tar(path, [*samples(["a"]), ("x" * (MAX_HEADER_BYTES * 2) + ".png", png(1))])
    tally = Tally()
    assert [s["__key__"] for s in tar_samples(str(path), tally=tally)] == ["a"]
    assert "member header of" in tally.damage


@pytest.mark.parametrize(
    "odd",
    [
        "b\nc",  # a newline inside the key
        "dir.v2\nsub/b",  # a newline in a folder whose name has a dot: webdataset's pattern matches nothing
        "b\x1b[31m",  # a terminal escape
    ],
)
def test_a_name_with_a_newline_is_a_sample_like_any_other(digits, odd, capsys):
    run, base = digits
    path = base.parent / "odd.tar"
    write_tar(path, samples(["a", odd, "c"]))
    assert count_samples(path) == (3, [0, 1, 0])
    capsys.readouterr()
    assert main(["predict", "--weights", str(run), str(path), "--json"]) == 0
    rows = [json.loads(line)["path"] for line in capsys.readouterr().out.splitlines()]
    assert rows == [f"{path}:a.png", f"{path}:{odd}.png", f"{path}:c.png"]


def test_members_that_are_not_sample_files_are_named(digits, capsys):
    run, base = digits
    path = base.parent / "strays.tar"
    write_tar(path, [*samples(["a", "b"]), ("README", b"hello"), (".hidden", b"x")])
    capsys.readouterr()
    assert main(["predict", "--weights", str(run), str(path), "--json"]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 and "2 members that are not a sample's {key}.{ext} file left out" in err


# -- the index ------------------------------------------------------------------------------------------------


def shard_index(digits, tmp_path: Path) -> Path:
    _, base = digits
    out = tmp_path / "copy"
    out.mkdir()
    for f in base.iterdir():
        os.symlink(f, out / f.name) if f.name != INDEX else (out / INDEX).write_text(f.read_text())
    return out


def train_line(folder: Path, capsys) -> str:
    capsys.readouterr()
    argv = ["train", "--model", "deit_pico_patch7_28", "--data-set", "wds", "--data-path", str(folder)]
    code = main([*argv, "--epochs", "1", "--output_dir", str(folder / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: i["splits"]["train"]["shards"].append(i["splits"]["train"]["shards"][0]), "listed twice"),
        (lambda i: i["splits"]["val"]["shards"].append(i["splits"]["train"]["shards"][0]), "listed twice"),
        (lambda i: i["splits"]["train"].update(class_counts=[1, 2, 3]), "class_counts must give each of the 10"),
        (lambda i: i["splits"]["train"].update(seek_every=0), "seek_every=0 is not a positive count"),
        (lambda i: i["splits"]["train"].update(seek_every="x"), "seek_every='x' is not a positive count"),
        (lambda i: i.update(class_names=[str(k) for k in range(MAX_CLASSES + 1)]), f"at most {MAX_CLASSES:,}"),
    ],
)
def test_an_inconsistent_index_is_one_line(digits, tmp_path, capsys, change, message):
    folder = shard_index(digits, tmp_path)
    index = json.loads((folder / INDEX).read_text())
    change(index)
    (folder / INDEX).write_text(json.dumps(index))
    assert message in train_line(folder, capsys)


def test_an_index_too_deep_or_too_large_is_one_line(digits, tmp_path, capsys):
    folder = shard_index(digits, tmp_path)
    (folder / INDEX).write_text("[" * 100_000 + "]" * 100_000)
    assert "nests its values too deeply" in train_line(folder, capsys)
    (folder / INDEX).unlink()
    with open(folder / INDEX, "wb") as f:
        f.truncate(MAX_INDEX_BYTES + 1)  # a sparse file: its size is refused before a byte is read
    assert f"over the {MAX_INDEX_BYTES:,}" in train_line(folder, capsys)


def test_classes_without_samples_are_named_before_a_model_is_sized_for_them(digits, tmp_path, caplog):
    """The probe's 10^6 class names built a 65M-parameter model without a word: classes the index lists but no
    sample has are counted in a warning (here 2 of 12), and the run goes on with as many outputs."""
    folder = shard_index(digits, tmp_path)
    index = json.loads((folder / INDEX).read_text())
    index["class_names"] += ["ghost-a", "ghost-b"]
    for split in index["splits"].values():
        split["class_counts"] += [0, 0]
    (folder / INDEX).write_text(json.dumps(index))
    argv = ["train", "--model", "deit_pico_patch7_28", "--data-set", "wds", "--data-path", str(folder)]
    assert main([*argv, "--epochs", "1", "--num_workers", "0", "--output_dir", str(tmp_path / "run")]) == 0
    warned = [r.getMessage() for r in caplog.records if "have no" in r.getMessage()]
    assert any("2 of its 12 classes have no train samples" in w for w in warned), warned


# -- one test per row of docs/safety.md's table that no test above goes past ---------------------------------------


def test_a_pattern_longer_than_its_bound_is_refused_before_it_is_read():
    with pytest.raises(ValueError, match=f"at most {4096}"):
        pattern_count("shards/train-{" + ",".join(["a"] * 3000) + "}.tar")


def test_an_index_listing_more_shards_than_a_split_may_have_is_one_line(digits, tmp_path, capsys):
    folder = shard_index(digits, tmp_path)
    index = json.loads((folder / INDEX).read_text())
    train = index["splits"]["train"]
    train["shards"] = [{"name": f"train-{i:07d}.tar", "samples": 0, "seeks": []} for i in range(MAX_SHARDS + 1)]
    (folder / INDEX).write_text(json.dumps(index))
    assert f"over the {MAX_SHARDS:,} a split may have" in train_line(folder, capsys)


def test_a_label_member_over_its_bound_is_left_out_and_counted(tmp_path):
    path = tmp_path / "labels.tar"
    write_tar(path, [*samples(["a"]), ("b.png", png(3)), ("b.cls", b"1" + b" " * 100)])
    tally = Tally()
    got = list(tar_samples(str(path), tally=tally))
    assert [s["__key__"] for s in got] == ["a", "b"] and got[1]["cls"] is None and tally.oversized == 1
    assert "cls member of 101 bytes" in got[1]["__oversized__"]


def test_an_unindexed_shard_of_a_class_over_a_million_is_refused(tmp_path):
    path = tmp_path / "huge-000000.tar"
    write_tar(path, [("a.png", png(1)), ("a.cls", b"%d" % MAX_CLASSES), ("b.png", png(2)), ("b.cls", b"0")])
    with pytest.raises(ValueError, match=f"over the {MAX_CLASSES:,} classes"):
        open_split(str(tmp_path / "huge-{000000..000000}.tar"), "train")
