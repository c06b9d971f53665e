"""bench/gpu.py runs end to end: on the stand-in "fake" device everywhere (its code path, checks
and output), on "cuda" where a GPU is present."""

import json

import pytest
from fake_device import register

from fastcnn import cuda


@pytest.fixture
def gpu_bench(bench_module):
    return bench_module("gpu")


@pytest.mark.parametrize("device", ["fake", "cuda"])
def test_gpu_benchmark_measures_every_layer_and_checks_it(gpu_bench, device, capsys):
    if device == "cuda" and not cuda.is_available():
        pytest.skip("no CUDA device")
    register()
    assert gpu_bench.main(["--quick", "--batch", "8"], device=device) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line[:1] == "{"]
    kernels = [r for r in lines if r["bench"] == "gpu_kernel"]
    ops = {(r["op"], r["pass"]) for r in kernels}
    for layer in ("conv1", "conv2", "pool1", "pool2"):
        assert {(layer, "fwd"), (layer, "bwd")} <= ops
    assert {("fc1", "fwd"), ("fc2", "fwd"), ("sgemm", "fwd")} <= ops
    assert all(r["valid"] for r in kernels), [r for r in kernels if not r["valid"]]
    rates = {r["mode"]: r["images_per_second"] for r in lines if r["bench"] == "gpu_train"}
    assert set(rates) == {"train", "infer"} and min(rates.values()) > 0


def test_gpu_benchmark_without_a_gpu_says_so(gpu_bench, capsys):
    if cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_bench.main(["--quick"]) == 0
    assert "no GPU here" in capsys.readouterr().out
