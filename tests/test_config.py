"""Config: presets parse, flags override YAML, unknown keys and bad values are errors with a hint."""

from pathlib import Path

import pytest

from deit.cli import build_parser
from deit.config import TrainConfig, load_yaml, merge
from deit.data import dataset_defaults

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def config_from(argv, tmp_path=None, yaml_text=None):
    base = {}
    if yaml_text is not None:
        path = tmp_path / "preset.yaml"
        path.write_text(yaml_text)
        base = load_yaml(path)
    args = build_parser().parse_args(["train", *argv])
    values, explicit = merge(base, {k: v for k, v in vars(args).items() if "." in k})
    return TrainConfig.from_dict(values, explicit)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_preset_parses(path):
    cfg = TrainConfig.from_dict(load_yaml(path))
    assert cfg.model.model


def test_presets_exist_for_the_paper_recipes():
    names = {p.stem for p in CONFIGS}
    for size in ("tiny", "small", "base"):
        assert f"deit_{size}_imagenet" in names and f"deit_{size}_distilled_imagenet" in names


def test_flags_override_yaml_and_are_recorded_as_explicit(tmp_path):
    cfg = config_from(
        ["--lr", "1e-3", "--no-model-ema", "--aa", "none"],
        tmp_path,
        "optim:\n  lr: 0.002\n  weight_decay: 0.1\nrun:\n  epochs: 3\n",
    )
    assert cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 0.1 and cfg.run.epochs == 3
    assert cfg.optim.model_ema is False and cfg.aug.aa is None
    assert {"optim.lr", "optim.weight_decay", "run.epochs", "optim.model_ema"} <= cfg.explicit


def test_data_set_defaults_fill_only_what_the_user_did_not_set():
    cfg = config_from(["--data-set", "mnist5k", "--hflip", "0.3"])
    tuned = cfg.with_defaults(dataset_defaults("mnist5k"))
    assert tuned.aug.hflip == 0.3  # given by the user
    assert tuned.aug.eval_crop_ratio == 1.0 and tuned.aug.color_jitter == 0.0  # the digits' defaults
    assert config_from([]).with_defaults(dataset_defaults("imagenet")).aug.aa == "rand-m9-mstd0.5-inc1"


def test_unknown_keys_are_errors_with_a_suggestion(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key optim\.lrr \(did you mean optim\.lr\?\)"):
        config_from([], tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(ValueError, match="unknown config section"):
        config_from([], tmp_path, "optimizer:\n  lr: 0.1\n")
    with pytest.raises(SystemExit):  # argparse: unknown flag
        build_parser().parse_args(["train", "--learning-rate", "0.1"])
    with pytest.raises(SystemExit):  # no abbreviations of flags either
        build_parser().parse_args(["train", "--warmup", "1"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "33"], "batch_size=33 is odd, but Mixup/CutMix"),
        (["--drop-path", "1.5"], r"model.drop_path=1.5 must be in \[0, 1\)"),
        (["--distillation-type", "medium"], "distillation_type='medium'"),
        (["--distillation-alpha", "2"], "distillation_alpha=2.0"),
        (["--precision", "fp8"], "precision='fp8'"),
        (["--epochs", "0"], "epochs=0"),
        (["--mixup-mode", "row"], "mixup_mode='row'"),
        (["--unlabelled", "--distillation-type", "hard"], "data.unlabelled needs data.labels_per_class"),
        (["--unlabelled", "--labels-per-class", "10"], "images without labels teach only through a teacher"),
    ],
)
def test_bad_values_name_the_key_and_the_rule(argv, message):
    with pytest.raises(ValueError, match=message):
        config_from(argv)


def test_odd_batch_is_fine_without_mixup():
    assert config_from(["--batch-size", "33", "--mixup", "0", "--cutmix", "0"]).run.batch_size == 33
