"""`deit attention`: rollout and token maps are distributions; for a trained model they are not uniform and differ
between digits; PNGs of the expected size; bad files reported, the others drawn."""

import torch
from PIL import Image

import deit
from deit.cli import main
from deit.data import build_dataset, eval_transform
from deit.explain import attention_maps, attention_rollout


def test_rollout_of_identity_attention_stays_on_each_token():
    eye = torch.eye(5).expand(2, 3, 5, 5)  # every token attends to itself
    assert torch.allclose(attention_rollout([eye, eye]), torch.eye(5).expand(2, 5, 5))
    uniform = torch.full((1, 2, 4, 4), 0.25)
    rolled = attention_rollout([uniform])
    assert torch.allclose(rolled.sum(-1), torch.ones(1, 4)) and rolled[0, 0, 0] > rolled[0, 0, 1]


def test_maps_of_a_trained_model_are_not_uniform_and_differ_between_digits(trained):
    model = deit.create_model(pretrained=trained)
    val, info = build_dataset("mnist5k", None, False)
    val.transform = eval_transform(28, mean=info.mean, std=info.std, crop_ratio=1.0)
    one, seven = val.targets.index(1), val.targets.index(7)
    maps = attention_maps(model, torch.stack([val[one][0], val[seven][0]]))
    assert set(maps) == {"rollout", "class token"}  # not distilled: no distillation-token map
    for m in maps.values():
        assert m.shape == (2, 16) and torch.allclose(m.sum(-1), torch.ones(2))
        assert m.std(dim=1).min() > 1e-3  # not uniform
        assert (m[0] - m[1]).abs().max() > 1e-2  # a 1 and a 7 are looked at differently
    distilled = deit.create_model("deit_pico_distilled_patch7_28", num_classes=10, in_chans=1)
    assert "distillation token" in attention_maps(distilled, torch.randn(1, 1, 28, 28))


def test_attention_command_writes_pictures_and_reports_bad_files(trained, tmp_path, capsys):
    val, _ = build_dataset("mnist5k", None, False)
    for i in range(2):
        Image.fromarray(val.images[i], "L").save(tmp_path / f"digit{i}.png")
    (tmp_path / "bad.png").write_text("not an image")
    code = main(
        [
            "attention",
            str(tmp_path / "digit0.png"),
            str(tmp_path / "bad.png"),
            str(tmp_path / "digit1.png"),
            "--weights",
            str(trained),
            "-o",
            str(tmp_path / "maps"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "bad.png" in err
    pictures = sorted((tmp_path / "maps").glob("*.png"))
    assert [p.name for p in pictures] == ["digit0_attention.png", "digit1_attention.png"]
    sizes = set()
    for p in pictures:
        with Image.open(p) as picture:
            sizes.add(picture.size)
    assert sizes == {(612, 216)}  # one row of 3 panels (image, rollout, class token), 1.7 x 1.8 in at 120 dpi
