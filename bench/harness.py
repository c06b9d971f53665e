"""The shared benchmark harness: timing, JSON lines, the machine's FP32 FMA peak, thread control.

Every measurement is `measure(fn)`: a few untimed warm-up calls, then timed calls until both
`repeats` calls and `min_time` seconds are reached; the median is what the scripts report (the
machine is shared and noisy, and a median ignores the odd slow call that a mean would not).
Every result is one JSON object on one line, printed by `emit()`.

The peak is measured, never assumed: `fma_peak_gflops(threads)` compiles a tiny C program (twelve
independent FMA chains in AVX-512 registers, else AVX2) with the system's C compiler into a
temporary folder and runs one copy per thread, in parallel. With no compiler, or no FMA, the peak
is None and every `peak_share` is None.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

__all__ = [
    "ROOT",
    "child_env",
    "measure",
    "summarize",
    "emit",
    "fma_peak_gflops",
    "set_threads",
    "numpy_blas",
    "machine_info",
    "print_table",
    "CpuWatch",
    "contention_note",
    "try_import_torch",
]

# The checkout this file belongs to. When its fastcnn is built in place (fastcnn/_C*.so), that
# is the fastcnn measured, ahead of any installed copy; otherwise the installed one is.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_USE_CHECKOUT = bool(glob.glob(os.path.join(ROOT, "fastcnn", "_C*")))
if _USE_CHECKOUT and ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def child_env() -> dict:
    """Environment for a child Python that must import the same fastcnn as this process."""
    env = dict(os.environ)
    if _USE_CHECKOUT:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


# ---- timing -------------------------------------------------------------------------------------


def measure(fn, *, warmup=3, repeats=10, min_time=0.2, max_time=30.0) -> dict:
    """Time fn(): `warmup` untimed calls, then at least `repeats` timed calls and `min_time`
    seconds (stopping early only at `max_time`). Returns {median_s, min_s, repeats, times}."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        spent = time.perf_counter() - start
        if (len(times) >= repeats and spent >= min_time) or spent >= max_time:
            break
    return summarize(times)


def summarize(times) -> dict:
    """{median_s, min_s, repeats, times} of a list of per-call seconds (several measure() runs
    of one thing, interleaved with other things, are pooled this way)."""
    times = list(times)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "repeats": len(times),
        "times": times,
    }


def emit(record: dict) -> None:
    """One measurement as one JSON line on stdout (floats rounded for reading), flushed."""
    print(json.dumps({k: _rounded(v) for k, v in record.items()}), flush=True)


def _rounded(v):
    if isinstance(v, float):
        return float(f"{v:.4g}")
    if isinstance(v, (list, tuple)):
        return [_rounded(x) for x in v]
    return v


# ---- the FMA peak -------------------------------------------------------------------------------

# Twelve independent accumulators: more than an FMA's latency x throughput on any current x86
# (Zen 4: 4 cycles x 1 zmm/cycle; Intel server: 4 x 2), so the loop is throughput-bound. a*b + c
# with b just under 1 converges to c / (1 - b) = 1: no overflow, no denormals.
_FMA_SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ISA "avx512"
static float first(vec v) { return _mm512_cvtss_f32(v); }
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ISA "avx2"
static float first(vec v) { return _mm256_cvtss_f32(v); }
#endif

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? atof(argv[1]) : 0.3;
  const double warmup = argc > 2 ? atof(argv[2]) : 0.05;
  vec a0 = SET1(0.5f), a1 = SET1(0.6f), a2 = SET1(0.7f), a3 = SET1(0.8f), a4 = SET1(0.9f),
      a5 = SET1(1.1f), a6 = SET1(1.2f), a7 = SET1(1.3f), a8 = SET1(1.4f), a9 = SET1(1.5f),
      a10 = SET1(1.6f), a11 = SET1(1.7f);
  const vec b = SET1(0.999999f), c = SET1(1e-6f);
  long iters = 0;
  double t0 = now(), t = t0, start = t0;
  int timing = 0;
  for (;;) {
    for (int i = 0; i < 4096; ++i) {
      a0 = FMA(a0, b, c); a1 = FMA(a1, b, c); a2 = FMA(a2, b, c); a3 = FMA(a3, b, c);
      a4 = FMA(a4, b, c); a5 = FMA(a5, b, c); a6 = FMA(a6, b, c); a7 = FMA(a7, b, c);
      a8 = FMA(a8, b, c); a9 = FMA(a9, b, c); a10 = FMA(a10, b, c); a11 = FMA(a11, b, c);
    }
    t = now();
    if (!timing) {
      if (t - start >= warmup) { timing = 1; t0 = t; iters = 0; }
      continue;
    }
    iters += 4096;
    if (t - t0 >= seconds) break;
  }
  float sum = first(a0) + first(a1) + first(a2) + first(a3) + first(a4) + first(a5) +
              first(a6) + first(a7) + first(a8) + first(a9) + first(a10) + first(a11);
  double flops = (double)iters * 12 * LANES * 2;
  printf("%s %.3f %g\n", ISA, flops / (t - t0) * 1e-9, sum);
  return 0;
}
"""

_FLAG_SETS = (("-mavx512f", "-mfma"), ("-mavx2", "-mfma"))


def _build_fma_program(directory: str) -> str | None:
    compiler = (
        os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    )
    if not compiler:
        return None
    src = os.path.join(directory, "fma.c")
    with open(src, "w") as f:
        f.write(_FMA_SOURCE)
    for flags in _FLAG_SETS:
        exe = os.path.join(directory, "fma_" + flags[0].lstrip("-m"))
        built = subprocess.run([compiler, "-O2", *flags, src, "-o", exe], capture_output=True)
        if built.returncode != 0:
            continue
        try:  # compiled is not runnable: the CPU may lack the ISA (SIGILL)
            probe = subprocess.run([exe, "0.01", "0"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return exe
    return None


def fma_peak_gflops(threads_list=(1, 2), *, seconds=0.3, trials=3) -> dict:
    """{threads: {"gflops", "isa", "trials"}} measured on this machine now; gflops None if the
    program cannot be built. Each trial runs one copy per thread in parallel and sums them; the
    best trial is the peak (interference only ever lowers it)."""
    result = {}
    with tempfile.TemporaryDirectory(prefix="fastcnn-fma-") as d:
        exe = _build_fma_program(d)
        for t in threads_list:
            if exe is None:
                result[t] = {"gflops": None, "isa": None, "trials": []}
                continue
            totals, isa = [], None
            for _ in range(trials):
                procs = [
                    subprocess.Popen([exe, str(seconds)], stdout=subprocess.PIPE, text=True)
                    for _ in range(t)
                ]
                outs = [p.communicate()[0].split() for p in procs]
                isa = outs[0][0]
                totals.append(sum(float(o[1]) for o in outs))
            result[t] = {"gflops": max(totals), "isa": isa, "trials": totals}
    return result


# ---- threads ------------------------------------------------------------------------------------


def set_threads(t: int, torch=None) -> None:
    """The same thread count for fastcnn, torch (if given) and numpy's BLAS (where reachable)."""
    import fastcnn

    fastcnn.set_num_threads(t)
    if torch is not None:
        torch.set_num_threads(t)
    numpy_blas("set_num_threads", t)


def _openblas():
    """numpy's OpenBLAS, found among the loaded libraries, and its symbol prefix; else None."""
    import numpy  # noqa: F401  (loads the library)

    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and "/" in ln})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas_", "64_"), ("openblas_", "64_"), ("openblas_", "")):
            if hasattr(lib, f"{prefix}get_num_threads{suffix}"):
                return lib, prefix, suffix
    return None


def numpy_blas(what: str, value=None):
    """numpy's OpenBLAS: 'set_num_threads' (value), 'get_num_threads', 'corename'; None when
    numpy's BLAS is not OpenBLAS or cannot be reached."""
    found = _openblas()
    if found is None:
        return None
    lib, prefix, suffix = found
    if what == "set_num_threads":
        getattr(lib, f"{prefix}set_num_threads{suffix}")(ctypes.c_int(int(value)))
        return int(value)
    if what == "get_num_threads":
        return int(getattr(lib, f"{prefix}get_num_threads{suffix}")())
    if what == "corename":
        fn = getattr(lib, f"{prefix}get_corename{suffix}", None)
        if fn is None:
            return None
        fn.restype = ctypes.c_char_p
        return fn().decode()
    raise ValueError(what)


# ---- context ------------------------------------------------------------------------------------


def try_import_torch():
    """torch, or None: PyTorch is the reference, never a requirement."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(torch=None) -> dict:
    """The context of a run, for its first JSON line."""
    import numpy

    import fastcnn

    info = {
        "bench": "machine",
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "fastcnn": fastcnn.__version__,
        "fastcnn_path": os.path.dirname(fastcnn.__file__),
        "gemm_kernel": fastcnn.ops.gemm_kernel(),
        "numpy": numpy.__version__,
        "numpy_blas_core": numpy_blas("corename"),
        "torch": torch.__version__ if torch is not None else None,
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    for var in ("FASTCNN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE", "OMP_WAIT_POLICY"):
        if os.environ.get(var):
            info[var] = os.environ[var]
    return info


class CpuWatch:
    """How much of the machine's CPU other processes used between start and `stop()`: the
    noise indicator of a run (this process and its waited-for children are excluded)."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal, seconds

    @staticmethod
    def _own():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        busy = self._busy()
        record = {"bench": "cpu_contention", "seconds": wall, "other_cpu_share": None}
        if busy is not None and self.busy0 is not None and wall > 0:
            others = (busy - self.busy0) - (self._own() - self.own0)
            record["other_cpu_share"] = max(0.0, others / (wall * (os.cpu_count() or 1)))
        return record


def contention_note(record: dict) -> str:
    share = record.get("other_cpu_share")
    if share is None:
        return "other processes' CPU use during the run: unknown"
    note = f"other processes used {share:.0%} of the machine's CPU during this run"
    if share > 0.05:
        note += " -- the numbers above are disturbed; rerun on a quieter machine"
    return note


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    """A plain text table (after the JSON lines; every line of it starts with something other
    than '{', so `grep '^{'` keeps only the JSON)."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)
    ]
    line = "  ".join("-" * w for w in widths)
    print(f"\n== {title} ==")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print(line)
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    sys.stdout.flush()


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)
