"""bench/kernels.py: a peak measured while a core was busy elsewhere must not turn into shares
above the hardware's (the targets would read as met)."""

import pytest


@pytest.fixture
def kernels(bench_module):
    return bench_module("kernels")


def record(gflops):
    return {"gflops": gflops, "peak_share": None}


def test_a_peak_beaten_by_sgemm_gives_no_shares(kernels):
    results = {
        ("sgemm", "fwd", 2): {"fastcnn": record(137.0), "numpy": record(150.0)},
        ("conv2", "fwd", 2): {"fastcnn": record(90.0)},
        ("conv2", "fwd", 1): {"fastcnn": record(80.0)},
    }
    unreliable = kernels.settle_peaks(results, {1: {"gflops": 100.0}, 2: {"gflops": 103.0}})
    assert unreliable == [2]
    assert all(
        r["peak_share"] is None for k, rr in results.items() if k[2] == 2 for r in rr.values()
    )
    assert results[("conv2", "fwd", 1)]["fastcnn"]["peak_share"] == pytest.approx(0.8)


def test_a_conv_that_skips_padding_may_pass_the_nominal_peak_a_little(kernels):
    # Nominal conv FLOPs count the padding taps, which oneDNN skips (up to 1/0.84 of the peak).
    results = {("conv2", "fwd", 2): {"torch": record(115.0), "fastcnn": record(90.0)}}
    assert kernels.settle_peaks(results, {2: {"gflops": 100.0}}) == []
    assert results[("conv2", "fwd", 2)]["torch"]["peak_share"] == pytest.approx(1.15)
    results = {("conv2", "fwd", 2): {"torch": record(125.0)}}
    assert kernels.settle_peaks(results, {2: {"gflops": 100.0}}) == [2]
    assert results[("conv2", "fwd", 2)]["torch"]["peak_share"] is None


def test_an_unknown_peak_gives_no_shares_and_no_warning(kernels):
    results = {("sgemm", "fwd", 1): {"fastcnn": record(70.0)}}
    assert kernels.settle_peaks(results, {1: {"gflops": None}}) == []
    assert results[("sgemm", "fwd", 1)]["fastcnn"]["peak_share"] is None
