"""The loader path's JPEG draft mode: a large photo decoded at a lower scale by its random resized crop, with the
crop box unchanged and the view close to the whole decode's; a damaged JPEG found there is passed over and counted."""

import numpy as np
import torch
from PIL import Image

from deit.data.datasets import ImageFolderDataset
from deit.data.images import LazyJpeg, read_image, read_lazy
from deit.data.sampling import seeded
from deit.data.transforms import Recipe, crop_transform


def photo(path, width: int, height: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    Image.fromarray(low).resize((width, height), Image.BICUBIC).save(path, quality=90)


def test_a_large_crop_is_decoded_at_a_lower_scale_with_the_same_box(tmp_path):
    crop = crop_transform(64, Recipe(crop_scale=0.5, hflip=0.0))
    for k, (width, height) in enumerate([(1600, 1200), (900, 1400), (2400, 700)]):
        path = tmp_path / f"{k}.jpg"
        photo(path, width, height, k)
        lazy = read_lazy(path, "RGB")
        assert isinstance(lazy, LazyJpeg) and lazy.size == (width, height)
        with seeded(k):
            box = crop.transforms[0].draw(width, height)[0]
        with seeded(k):
            whole = crop(read_image(path, "RGB"))
        with seeded(k):
            drafted = crop(lazy)
        assert min(box[2], box[3]) >= 2 * 64  # a crop libjpeg may decode at half scale or less
        # measured on such photos: 0.5 to 2.9 levels of 255 on average (docs/speed.md); a misplaced box: 25 and up
        assert (whole.int() - drafted.int()).abs().float().mean() < 3.0


def test_a_crop_under_twice_the_size_is_decoded_whole():
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 100, 3), dtype=np.uint8)).save(buffer, "JPEG")
    lazy = LazyJpeg(buffer.getvalue(), "RGB", (100, 90), "small.jpg")
    crop = crop_transform(64, Recipe(crop_scale=0.08))
    with seeded(3):
        whole = crop(read_image(io.BytesIO(buffer.getvalue()), "RGB"))
    with seeded(3):
        assert torch.equal(crop(lazy), whole)


def test_a_damaged_jpeg_found_by_its_crop_is_passed_over_and_counted(tmp_path, caplog):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    photo(folder / "0.jpg", 300, 200, 0)
    data = (folder / "0.jpg").read_bytes()
    (folder / "1_damaged.jpg").write_bytes(data[:600] + bytes(len(data) - 602) + data[-2:])  # its end marker kept
    photo(folder / "2.jpg", 300, 200, 1)
    dataset = ImageFolderDataset(tmp_path / "train", grayscale=False)
    dataset.reader = read_lazy
    dataset.transform = crop_transform(32, Recipe())
    views = [dataset[i] for i in range(3)]
    assert [skipped for _, _, skipped in views] == [0, 1, 0]  # the damaged file's place: the next image
    assert "1_damaged.jpg" in caplog.text
