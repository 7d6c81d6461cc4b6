"""`deit benchmark`: every measurement runs and is recorded with its baseline (timings themselves are not tested)."""

import json

import pytest
import torch

from deit.benchmark import timm_twin
from deit.cli import main
from deit.models import create_model


def test_the_timm_twin_computes_what_ours_does():
    ours = create_model("deit_pico_distilled_patch7_28", num_classes=10, in_chans=1).eval()
    twin = timm_twin(ours).eval()
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(ours(x), twin(x), atol=1e-5)


@pytest.mark.smoke
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_benchmark_measures_each_part_against_its_baseline(tmp_path, precision):
    """bf16: every part under CPU bf16 autocast, the dtypes CUDA's autocast gives (a part that mixes them up, as
    the cache lookup once did on the GPU, stops here without one)."""
    argv = ["benchmark", "--rounds", "1", "--steps", "1", "--num_workers", "0", "--precision", precision]
    argv += ["--data-images", "64"]  # two batches: every part runs, quickly
    assert main([*argv, "--out", str(tmp_path)]) == 0
    record = json.loads(next(tmp_path.glob("deit_benchmark_cpu_*.json")).read_text())
    names = [r["measurement"] for r in record["results"]]
    assert names == [
        "inference",
        "train step",
        "distilled step, teacher online",
        "data pipeline (0 workers)",
        "data pipeline, batch aug on cpu",
        "data pipeline, device path on cpu",
        "end to end, distilled (0 workers)",
        "end to end, distilled, batch aug on cpu",
        "end to end, distilled, device path on cpu",
    ]
    for result in record["results"]:
        assert result["ratio"] > 0 and all(v > 0 for v in result["img_s"].values())
        assert result["baseline"] in result["img_s"] and result["ours"] in result["img_s"]
    assert record["results"][2]["cached_ratio"] > 0 and "ours + cache" in record["results"][2]["img_s"]
    assert record["results"][-1]["threads"]["ours"] == torch.get_num_threads()  # no loader processes to share with
    assert record["machine"] and record["batch_size"] == 32 and record["precision"] == precision


@pytest.mark.parametrize(
    "cpuinfo, expected",
    [
        (
            "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\nmodel name\t: AMD EPYC\n\n"
            "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: other\n",
            "AMD EPYC (family 23, model 49)",
        ),
        ("processor\t: 0\nmodel name\t: Some CPU\n", "Some CPU"),  # no family: the name alone
    ],
)
def test_records_name_the_processor_by_its_family_and_model(monkeypatch, cpuinfo, expected):
    """Two hosts that both call themselves "AMD EPYC" ran the same demo 1.5x apart: records tell them apart."""
    import os
    import pathlib

    from deit.distributed import cpu_name

    monkeypatch.setattr(pathlib.Path, "read_text", lambda self, *a, **k: cpuinfo)
    assert cpu_name() == f"{expected}, {os.cpu_count()} cores"
