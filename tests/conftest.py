"""Shared fixtures: a seeded RNG, the GEMM micro-kernel under test, the thread count.

fastcnn is imported inside the fixtures so that the reference self-tests
(test_reference_gradcheck.py) run even before the extension is built.
"""

import numpy as np
import pytest

# Every micro-kernel table of the build (test_gemm.py checks this against the extension's):
# the ISA kernels, the portable one, and the portable twins at the ISA kernels' geometry.
ALL_GEMM_KERNELS = ["avx512", "avx2", "generic", "generic-avx512", "generic-avx2"]

# Which kernel tables the gemm_kernel fixture ran and which it skipped, for the summary line.
_kernels_ran: set = set()
_kernels_skipped: dict = {}


@pytest.fixture(autouse=True, scope="session")
def _private_image_cache(tmp_path_factory):
    """ImageFolder's decoded-pixel cache goes to a folder of this run's, never the user's
    ~/.cache (subprocesses inherit the variable)."""
    import os

    old = os.environ.get("FASTCNN_CACHE")
    os.environ["FASTCNN_CACHE"] = str(tmp_path_factory.mktemp("image-cache"))
    yield
    if old is None:
        os.environ.pop("FASTCNN_CACHE", None)
    else:
        os.environ["FASTCNN_CACHE"] = old


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture(params=ALL_GEMM_KERNELS)
def gemm_kernel(request):
    """Force one GEMM micro-kernel for the test, skip it where the CPU lacks it, then restore."""
    from fastcnn import ops

    name = request.param
    if name not in ops.gemm_kernels():
        isa = next(k["isa"] for k in ops.gemm_kernel_table() if k["name"] == name)
        _kernels_skipped[name] = isa
        pytest.skip(f"GEMM kernel {name!r} needs {isa}, which this CPU lacks")
    _kernels_ran.add(name)
    previous = ops.gemm_kernel()
    ops.set_gemm_kernel(name)
    assert ops.gemm_kernel() == name
    yield name
    ops.set_gemm_kernel(previous)


@pytest.fixture(params=["auto", "indirect", "im2col"])
def conv_algorithm(request):
    """Run a conv test on every algorithm: Winograd and the indirect NHWC kernels, the indirect
    kernels alone, and the im2col reference."""
    from fastcnn import ops

    previous = ops.conv_algorithm()
    ops.set_conv_algorithm(request.param)
    yield request.param
    ops.set_conv_algorithm(previous)


@pytest.fixture
def bench_module(monkeypatch):
    """bench_module(name) imports bench/<name>.py afresh (bench/ is a folder of scripts, not a
    package); sys.path is restored after the test."""
    import importlib
    import pathlib
    import sys

    def load(name):
        monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
        sys.modules.pop(name, None)
        return importlib.import_module(name)

    return load


@pytest.fixture
def num_threads():
    """Lets a test change fastcnn's thread count; the previous count is restored afterwards."""
    import fastcnn

    previous = fastcnn.get_num_threads()
    yield fastcnn.set_num_threads
    fastcnn.set_num_threads(previous)


def run_python(code, **env):
    """Runs `code` in a fresh interpreter that imports the same fastcnn as this one (the
    installed package, or a built source tree), from a neutral working directory."""
    import os
    import pathlib
    import subprocess
    import sys
    import tempfile

    import fastcnn

    environ = {k: v for k, v in os.environ.items() if k != "FASTCNN_NUM_THREADS"}
    environ.update(env)
    package_parent = str(pathlib.Path(fastcnn.__file__).resolve().parents[1])
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_parent, environ.get("PYTHONPATH")) if p
    )
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=cwd,
            env=environ,
        ).stdout.strip()


def pytest_terminal_summary(terminalreporter):
    """One line naming the kernel tables the run exercised and those skipped for want of the
    ISA (a skipped table's SIMD loops went untested on this machine)."""
    if not _kernels_ran and not _kernels_skipped:
        return
    ran = [k for k in ALL_GEMM_KERNELS if k in _kernels_ran]
    skipped = [f"{k} (no {_kernels_skipped[k]})" for k in ALL_GEMM_KERNELS if k in _kernels_skipped]
    terminalreporter.write_line(
        f"fastcnn kernel tables ran: {', '.join(ran) or 'none'}; "
        f"skipped for want of the ISA: {', '.join(skipped) or 'none'}"
    )
