"""The device input path on the CPU: Pillow's crops to the bit, the loader path's crop boxes and pixels for every
kind of file, the fallbacks counted, a run equal to the loader path's, resume, and the teacher cache's refusal."""

import io

import numpy as np
import pytest
import torch
from conftest import assert_same_run, interrupted_then_resumed, read_log
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from deit.data import build_dataset
from deit.data.device_views import DeviceDecoder, DrawView, EncodedBatch, read_encoded
from deit.data.images import read_image
from deit.data.resample import FILTERS, resized_crops, vertical_first
from deit.data.sampling import seeded
from deit.data.transforms import Recipe, crop_transform

PIL_FILTERS = {
    "nearest": Image.NEAREST,
    "box": Image.BOX,
    "bilinear": Image.BILINEAR,
    "hamming": Image.HAMMING,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


def smooth_image(rng, width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Photo-like content: low-resolution noise enlarged (JPEG keeps it close to itself)."""
    low = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(low).resize((width, height), Image.BILINEAR).convert(mode)


@pytest.mark.smoke
@pytest.mark.parametrize("name", FILTERS)
def test_batched_crops_are_pillows_resize_with_a_box_to_the_bit(name):
    rng = np.random.default_rng(FILTERS.index(name))
    images, boxes, flips, expected = [], [], [], []
    size = 24
    for k in range(12):
        width, height = (int(v) for v in rng.integers(8, 160, 2))
        if k == 0:
            width, height = 40, 150  # loses more rows than twice the columns: Pillow 13 resamples rows first
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)  # noise: every rounding shows
        cw, ch = int(rng.integers(1, width + 1)), int(rng.integers(1, height + 1))
        left, top = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
        flip = bool(k % 2)
        crop = Image.fromarray(pixels).resize((size, size), PIL_FILTERS[name], box=(left, top, left + cw, top + ch))
        if flip:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        images.append(torch.from_numpy(pixels).permute(2, 0, 1))
        boxes.append([left, top, cw, ch])
        flips.append(flip)
        expected.append(torch.from_numpy(np.array(crop)).permute(2, 0, 1))
    # a small memory bound: the crops are made in several groups
    out = resized_crops(images, torch.tensor(boxes), size, name, torch.tensor(flips), max_bytes=200_000)
    assert torch.equal(out, torch.stack(expected))


def test_rows_first_where_pillow_does():
    first = vertical_first(torch.tensor([150.0, 100.0, 10.0]), torch.tensor([40.0, 100.0, 300.0]), 24, 24)
    import PIL

    assert first.tolist() == ([True, False, False] if int(PIL.__version__.split(".")[0]) >= 13 else [False] * 3)


def odd_files(rng) -> dict[str, bytes]:
    """One file of each kind the device path meets: the device decodes the baseline JPEGs, the rest fall back."""
    files = {}

    def save(key, image, fmt, **options):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        files[key] = buffer.getvalue()

    save("baseline.jpg", smooth_image(rng, 120, 90), "JPEG", quality=90)
    save("gray.jpg", smooth_image(rng, 70, 130, "L"), "JPEG", quality=90)
    save("large.jpg", smooth_image(rng, 400, 300), "JPEG", quality=85)
    save("progressive.jpg", smooth_image(rng, 100, 80), "JPEG", quality=90, progressive=True)
    save("cmyk.jpg", smooth_image(rng, 90, 60).convert("CMYK"), "JPEG", quality=90)
    save("photo.png", smooth_image(rng, 50, 64), "PNG")
    save("16bit.png", Image.fromarray(rng.integers(0, 65535, (40, 56), dtype=np.uint16)), "PNG")
    return files


DEVICE_DECODED = {"baseline.jpg", "gray.jpg", "large.jpg"}


@pytest.mark.smoke
@pytest.mark.parametrize("src", [False, True], ids=["random-resized-crop", "simple-random-crop"])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_same_crop_boxes_and_pixels_as_the_loader_path_for_every_kind_of_file(mode, src):
    files = odd_files(np.random.default_rng(0))
    loader_path = crop_transform(32, Recipe(crop_scale=0.08, hflip=0.5, src=src))
    draw = DrawView(*loader_path.transforms[:2])
    expected, boxes, encoded = [], [], []
    for k, data in enumerate(files.values()):
        with seeded(100 + k):
            expected.append(loader_path(read_image(io.BytesIO(data), mode)))
        with seeded(100 + k):  # the box (or the resized size and window) the loader path drew, from the image's size
            image = read_image(io.BytesIO(data), mode)
            boxes.append(loader_path.transforms[0].draw(image.width, image.height)[:-1])
        with seeded(100 + k):
            encoded.append(draw(read_encoded(io.BytesIO(data), mode, name=f"file {k}")))
    assert [(e.resized, e.window) if src else (e.box,) for e in encoded] == boxes
    assert [e.jpeg for e in encoded] == [name in DEVICE_DECODED for name in files]
    decoder = DeviceDecoder(32, 3 if mode == "RGB" else 1, torch.device("cpu"))
    crops, order = decoder(EncodedBatch.of(encoded))
    assert order is None
    # torchvision's CPU decoder and Pillow share libjpeg: equal to the bit (a GPU's nvJPEG differs by a few levels)
    assert torch.equal(crops, torch.stack(expected))
    assert decoder.take_counts() == {"cpu_decoded": len(files) - len(DEVICE_DECODED), "unreadable": 0}


def test_a_truncated_jpeg_is_refused_as_on_the_loader_path():
    data = odd_files(np.random.default_rng(1))["baseline.jpg"]
    cut = io.BytesIO(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.jpg: not a readable image") as device_error:
        read_encoded(cut, "RGB", name="truncated.jpg")
    with pytest.raises(ValueError, match="truncated.jpg: not a readable image") as loader_error:
        read_image(io.BytesIO(data[: len(data) // 2]), "RGB", name="truncated.jpg")
    assert str(device_error.value) == str(loader_error.value)
    assert "BytesIO" not in str(device_error.value)


def test_what_the_device_refuses_pillow_decodes_and_what_none_reads_is_replaced(monkeypatch, caplog):
    import torchvision.io

    rng = np.random.default_rng(2)
    files = odd_files(rng)
    good = files["baseline.jpg"]
    refused = files["large.jpg"]
    broken = b"\xff\xd8\xff\xe0" + bytes(200) + b"\xff\xd9"  # a JPEG's first and last markers, nothing readable
    real = torchvision.io.decode_jpeg

    def fussy(data, **kwargs):  # a device decoder that refuses one file (nvJPEG refuses some Pillow reads)
        batch = data if isinstance(data, list) else [data]
        if any(len(d) == len(refused) for d in batch):
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", fussy)
    encoded = []
    for k, data in enumerate([good, refused, broken, good]):
        with seeded(k):
            item = read_encoded(io.BytesIO(data), "RGB", name=f"f{k}.jpg") if k != 2 else None
        if item is None:  # the broken one passes the header check only as bytes the device must try
            item = read_encoded(io.BytesIO(good), "RGB", name="f2.jpg")
            item.data = np.frombuffer(broken, dtype=np.uint8)
        encoded.append(DrawView(*crop_transform(32, Recipe()).transforms[:2])(item))
    decoder = DeviceDecoder(32, 3, torch.device("cpu"))
    crops, order = decoder(EncodedBatch.of(encoded))
    assert order.tolist() == [0, 1, 1, 3]  # the unreadable image's slot takes the previous image's view
    assert decoder.take_counts() == {"cpu_decoded": 1, "unreadable": 1}
    assert "f2.jpg" in caplog.text
    assert torch.equal(crops[2], crops[1])


def test_running_out_of_device_memory_is_one_line(monkeypatch):
    import torchvision.io

    def full(data, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", full)
    item = read_encoded(io.BytesIO(odd_files(np.random.default_rng(3))["large.jpg"]), "RGB", name="big.jpg")
    with pytest.raises(ValueError, match=r"ran out of memory decoding 1 images \(the largest 400x300\).*--batch-size"):
        DeviceDecoder(32, 3, torch.device("cpu"))(EncodedBatch.of([item]))


def write_mixed_folder(root, corrupt: bool = True):
    """Digits as files of every kind the device path meets, at sizes from 28 to 60 px, with one broken file."""
    train, _ = build_dataset("mnist5k", None, True, labels_per_class=6)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for i in range(len(train)):
            image, target, _ = train[i]
            folder = root / split / f"class_{target}"
            folder.mkdir(parents=True, exist_ok=True)
            image = image.resize(tuple(int(v) for v in rng.integers(28, 60, 2)), Image.BILINEAR)
            kind = i % 5
            if kind == 0:
                image.save(folder / f"{i}.png")
            elif kind == 1:
                image.save(folder / f"{i}.jpg", quality=90, progressive=True)
            elif kind == 2:
                image.convert("RGB").save(folder / f"{i}.jpg", quality=90)
            else:
                image.save(folder / f"{i}.jpg", quality=90)
    if corrupt:
        (root / "train" / "class_3" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
        # validation: one no reader opens, one whose header reads and whose data no decoder does (both left out)
        (root / "val" / "class_3" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
        whole = next((root / "val").glob("*/*.jpg")).read_bytes()
        (root / "val" / "class_2" / "damaged.jpg").write_bytes(whole[:400] + bytes(len(whole) - 402) + whole[-2:])


def folder_config(root, out, path: str, **extra):
    from deit.config import TrainConfig, merge

    values, explicit = merge(
        {},
        {
            "model.model": "deit_pico_patch4_28",
            "data.data_set": "folder",
            "data.data_path": str(root),
            "data.grayscale": True,
            "data.num_workers": 0,
            "data.input_path": path,
            "aug.batch_aug": True,
            "run.batch_size": 16,
            "run.epochs": 2,
            "run.device": "cpu",
            "optim.model_ema": False,
            "data.jpeg_draft": False,  # the device path decodes whole JPEGs: the loader path does too, to compare
            "run.output_dir": str(out),
            **extra,
        },
    )
    return TrainConfig.from_dict(values, explicit)


def test_a_run_on_the_device_path_is_the_loader_paths_run_and_resumes_to_it(tmp_path, monkeypatch, capsys):
    from deit.train import run

    write_mixed_folder(tmp_path / "digits")
    run(folder_config(tmp_path / "digits", tmp_path / "loader", "loader"))
    run(folder_config(tmp_path / "digits", tmp_path / "device", "device"))
    said = capsys.readouterr().out
    assert "input path loader" in said and "input path device" in said
    assert_same_run(tmp_path / "loader", tmp_path / "device", parts=("model",))
    log = read_log(tmp_path / "device")
    # the evaluation too: the validation files decoded, resized and centre-cropped on the device, the same numbers
    evaluated = [(line["test_acc1"], line["test_loss"]) for line in log]
    assert evaluated == [(line["test_acc1"], line["test_loss"]) for line in read_log(tmp_path / "loader")]
    assert [line["skipped_images"] for line in log] == [1, 1]
    assert all(line["cpu_decoded_images"] > 0 for line in log)  # the PNGs and progressive JPEGs

    def config_for(out, resume):
        return folder_config(tmp_path / "digits", out, "device", **({"run.resume": str(resume)} if resume else {}))

    interrupted_then_resumed(monkeypatch, config_for, tmp_path / "split", stop_epoch=1)
    assert_same_run(tmp_path / "device", tmp_path / "split", parts=("model",))


def test_a_cache_made_on_one_input_path_is_refused_by_the_other_in_one_line(tmp_path, teacher):
    from deit.train import run

    write_mixed_folder(tmp_path / "digits", corrupt=False)
    distilled = {
        "model.model": "deit_pico_distilled_patch4_28",
        "distill.distillation_type": "hard",
        "distill.teacher_path": str(teacher),
        "distill.teacher_cache": str(tmp_path / "cache"),
        "run.epochs": 1,
    }
    run(folder_config(tmp_path / "digits", tmp_path / "device", "device", **distilled))
    with pytest.raises(ValueError) as refused:
        run(folder_config(tmp_path / "digits", tmp_path / "loader", "loader", **distilled))
    message = str(refused.value)
    assert "\n" not in message
    assert "input_path=device" in message and "this run has loader" in message and "--input-path device" in message


def test_the_device_path_needs_batch_augmentation_and_image_files(tmp_path):
    from deit.train import run

    write_mixed_folder(tmp_path / "digits", corrupt=False)
    with pytest.raises(ValueError, match="--input-path device .*add --batch-aug"):
        run(folder_config(tmp_path / "digits", tmp_path / "run", "device", **{"aug.batch_aug": False}))
    with pytest.raises(ValueError, match="--input-path device is for image files; .* held in memory"):
        built_in = {"data.data_set": "mnist5k", "data.data_path": None, "data.grayscale": False}
        run(folder_config(None, tmp_path / "run2", "device", **built_in))


def test_shards_on_the_device_path_give_the_loader_paths_run(tmp_path):
    from deit.cli import main
    from deit.train import run

    write_mixed_folder(tmp_path / "digits")
    assert main(["shard", str(tmp_path / "digits"), str(tmp_path / "shards"), "--shard-size", "20KB"]) == 0
    shards = {"data.data_set": "wds", "data.data_path": str(tmp_path / "shards"), "data.num_workers": 2}
    run(folder_config(tmp_path / "digits", tmp_path / "loader", "loader", **shards))
    run(folder_config(tmp_path / "digits", tmp_path / "device", "device", **shards))
    assert_same_run(tmp_path / "loader", tmp_path / "device", parts=("model",))
    log = read_log(tmp_path / "device")
    assert all(line["cpu_decoded_images"] > 0 for line in log)  # deit shard left the broken file out
    assert [line["test_loss"] for line in log] == [line["test_loss"] for line in read_log(tmp_path / "loader")]


@pytest.mark.smoke
@pytest.mark.parametrize("crop_ratio,squash", [(0.875, False), (1.0, False), (0.9, True)])
def test_batched_centre_crops_are_timms_evaluation_view_to_the_bit(crop_ratio, squash):
    from torchvision import transforms as T

    from deit.data.resample import resized_centre_crops

    rng = np.random.default_rng(7)
    size, images, expected = 24, [], []
    scaled = int(size / crop_ratio)
    for name in ("bicubic", "bilinear", "nearest"):
        view = T.Compose(
            [
                T.Resize((scaled, scaled) if squash else scaled, interpolation=T.InterpolationMode(name)),
                T.CenterCrop(size),
            ]
        )
        images, expected = [], []
        for width, height in [(40, 30), (30, 57), (24, 24), (27, 100), (300, 31)]:
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            images.append(torch.from_numpy(pixels).permute(2, 0, 1))
            expected.append(torch.from_numpy(np.array(view(Image.fromarray(pixels)))).permute(2, 0, 1))
        out = resized_centre_crops(images, size, crop_ratio, name, squash=squash, max_bytes=100_000)
        assert torch.equal(out, torch.stack(expected)), name


@settings(max_examples=120, deadline=None)
@given(
    data=st.data(),
    name=st.sampled_from(FILTERS),
    width=st.integers(1, 90),
    height=st.integers(1, 90),
    size=st.integers(1, 40),
    channels=st.sampled_from([1, 3]),
)
def test_any_box_of_any_image_is_pillows_crop(data, name, width, height, size, channels):
    """Every box, size and filter, down to one pixel: Pillow's nearest steps its centres by repeated addition and
    can land a hair under a whole number; the others round at the halves of their fixed point."""
    cw, ch = data.draw(st.integers(1, width)), data.draw(st.integers(1, height))
    left, top = data.draw(st.integers(0, width - cw)), data.draw(st.integers(0, height - ch))
    seed = data.draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    crop = np.array(image.resize((size, size), PIL_FILTERS[name], box=(left, top, left + cw, top + ch)))
    expected = torch.from_numpy(crop.reshape(size, size, channels)).permute(2, 0, 1)
    out = resized_crops([torch.from_numpy(pixels).permute(2, 0, 1)], torch.tensor([[left, top, cw, ch]]), size, name)
    assert torch.equal(out[0], expected)


def test_two_processes_on_the_device_path_train_as_on_the_loader_path(tmp_path):
    """torchrun, 2 gloo processes with a loader process each: each process decodes its own share on its device,
    and the run equals the loader path's, weight for weight (the epoch's counts summed over processes)."""
    import os
    import subprocess
    import sys

    write_mixed_folder(tmp_path / "digits")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for path in ("loader", "device"):
        done = subprocess.run(
            [
                sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "deit", "train",
                "--model", "deit_pico_patch4_28", "--data-set", "folder", "--data-path", str(tmp_path / "digits"),
                "--grayscale", "--num_workers", "1", "--batch-size", "8", "--epochs", "2", "--no-model-ema",
                "--batch-aug", "--no-jpeg-draft", "--input-path", path, "--device", "cpu",
                "--output_dir", str(tmp_path / path),
            ],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(tmp_path / "loader", tmp_path / "device", parts=("model",))
    assert all(line["cpu_decoded_images"] > 0 for line in read_log(tmp_path / "device"))


@settings(max_examples=120, deadline=None)
@given(
    name=st.sampled_from(FILTERS),
    width=st.integers(1, 90),
    height=st.integers(1, 90),
    size=st.integers(5, 40),
    channels=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_simple_random_crop_of_any_image_is_torchvisions(name, width, height, size, channels, seed):
    """DeiT III's Simple Random Crop (Resize of the short side, RandomCrop from the image padded by 4 px,
    reflected), then a flip, from its drawn size and window: torchvision's and Pillow's pixels to the bit."""
    from deit.data.resample import resized_windows, whole_boxes
    from deit.data.transforms import HorizontalFlip, SimpleCrop

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    crop, flip = SimpleCrop(size, name), HorizontalFlip(0.5)
    with seeded(seed):
        view = np.array(flip(crop(image)))
    with seeded(seed):
        resized, window, _ = crop.draw(width, height)
        flipped = flip.draw()
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)
    out = resized_windows(
        [tensor],
        whole_boxes([tensor]),
        torch.tensor([resized]),
        torch.tensor([window]),
        size,
        name,
        torch.tensor([flipped]),
    )
    assert torch.equal(out[0], torch.from_numpy(view.reshape(size, size, channels)).permute(2, 0, 1))


def test_deit3_views_on_the_device_path_are_the_loader_paths(tmp_path):
    """DeiT III's views (Simple Random Crop, 3-Augment, colour jitter) from a folder of mixed files: the device
    path's run equals the loader path's, weight for weight."""
    from deit.train import run

    write_mixed_folder(tmp_path / "digits", corrupt=False)
    deit3 = {"aug.src": True, "aug.three_augment": True, "aug.aa": None, "aug.reprob": 0.0, "run.epochs": 1}
    run(folder_config(tmp_path / "digits", tmp_path / "loader", "loader", **deit3))
    run(folder_config(tmp_path / "digits", tmp_path / "device", "device", **deit3))
    assert_same_run(tmp_path / "loader", tmp_path / "device", parts=("model",))
