"""Fashion-MNIST from its original IDX files: the reader on files written here, the splits on the real ones."""

import gzip
import struct

import numpy as np
import pytest

from deit.data import build_dataset
from deit.data.builtin_sets import FASHION_CLASSES, FASHION_MNIST_SYSTEM, read_idx

REAL = pytest.mark.skipif(
    not (FASHION_MNIST_SYSTEM / "train-images-idx3-ubyte.gz").exists(),
    reason=f"Fashion-MNIST is not in {FASHION_MNIST_SYSTEM} (apt-get install dataset-fashion-mnist)",
)


def idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def write_raw(folder, n_train=30, n_test=20, compress=False):
    """torchvision's FashionMNIST/raw/ layout, with random images: n per split, labels 0-9 in turn."""
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        arrays[split] = rng.randint(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10
        for kind, array in zip(("images-idx3", "labels-idx1"), arrays[split]):
            path = folder / f"{split}-{kind}-ubyte"
            if compress:
                with gzip.open(f"{path}.gz", "wb") as f:
                    f.write(idx(array))
            else:
                path.write_bytes(idx(array))
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_the_full_set_is_the_files_images_and_labels(tmp_path, compress):
    arrays = write_raw(tmp_path / "FashionMNIST" / "raw", compress=compress)
    for train, split in ((True, "train"), (False, "t10k")):
        data, info = build_dataset("fashion-mnist-full", str(tmp_path), train)
        assert np.array_equal(data.images, arrays[split][0]) and data.targets == arrays[split][1].tolist()
    assert info.class_names == list(FASHION_CLASSES) and info.in_chans == 1 and info.native_size == 28
    # --data-path may name the folder of the files itself
    same, _ = build_dataset("fashion-mnist-full", str(tmp_path / "FashionMNIST" / "raw"), True)
    assert np.array_equal(same.images, arrays["train"][0])


def test_damaged_or_missing_files_are_one_line_errors(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    write_raw(raw)
    data = (raw / "train-images-idx3-ubyte").read_bytes()
    (raw / "train-images-idx3-ubyte").write_bytes(data[:-5])  # truncated
    with pytest.raises(ValueError, match="holds 23515 bytes of data, its header says \\(30, 28, 28\\)"):
        build_dataset("fashion-mnist-full", str(tmp_path), True)
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x00\x00\x0d\x03" + data[4:])  # floats, not bytes
    with pytest.raises(ValueError, match="not an IDX file of bytes with 3 dimension"):
        read_idx(bad, 3)
    bad.write_bytes(b"\x1f\x8b" + data[:40])
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad, 3)
    with pytest.raises(ValueError, match="no Fashion-MNIST IDX files"):
        build_dataset("fashion-mnist", str(tmp_path / "elsewhere"), True)


@REAL
def test_the_packaged_files_give_a_fixed_4000_1000_split_and_the_full_60000_10000():
    train, info = build_dataset("fashion-mnist", None, True)
    test, _ = build_dataset("fashion-mnist", None, False)
    assert (len(train), len(test)) == (4000, 1000)
    assert np.bincount(train.targets).tolist() == [400] * 10 and np.bincount(test.targets).tolist() == [100] * 10
    full_train, _ = build_dataset("fashion-mnist-full", None, True)
    full_test, _ = build_dataset("fashion-mnist-full", None, False)
    assert (len(full_train), len(full_test)) == (60000, 10000)
    # the small split's images come from the official training and test sets, so they never overlap
    test_rows = {row.tobytes() for row in full_test.images}
    assert not any(row.tobytes() in test_rows for row in train.images)
    assert all(row.tobytes() in test_rows for row in test.images)
    # the normalisation statistics are the training images'
    pixels = full_train.images.astype(np.float64) / 255
    assert abs(pixels.mean() - info.mean[0]) < 5e-4 and abs(pixels.std() - info.std[0]) < 5e-4
    again, _ = build_dataset("fashion-mnist", None, True)
    assert np.array_equal(again.images, train.images)
