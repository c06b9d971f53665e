#!/usr/bin/env bash
# Build fastcnn._C with AddressSanitizer + UndefinedBehaviorSanitizer in its own build folder
# and run the kernel tests against it.
#
#   scripts/sanitize.sh [extra pytest arguments]
#
# The instrumented extension never replaces fastcnn/_C*.so in the source tree: the Python
# package is copied into a temporary folder together with the sanitized .so, and the tests
# import it from there (PYTHONPATH), run from a neutral working directory with the repository's
# pyproject.toml as their configuration, so tests/conftest.py and tests/reference.py are found
# as usual. Python itself is not instrumented, so libasan is preloaded (LD_PRELOAD).
#
# Environment (all optional):
#   PYTHON                    interpreter to build for and test with (default: python3)
#   FASTCNN_SANITIZE_BUILD    build folder (default: build/asan)
#   FASTCNN_SANITIZERS        -fsanitize= list (default: address,undefined)
#   FASTCNN_SANITIZE_JOBS     build parallelism (default: all cores)
#   FASTCNN_SANITIZE_TESTS    test files or node ids, relative to the repository (default below)
#   ASAN_OPTIONS / UBSAN_OPTIONS   appended to the defaults below (later settings win)
# Exit status: pytest's (non-zero on any test failure or sanitizer report).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
PY_EXE="$("$PYTHON" -c 'import sys; print(sys.executable)')"
BUILD="${FASTCNN_SANITIZE_BUILD:-$ROOT/build/asan}"
SANITIZERS="${FASTCNN_SANITIZERS:-address,undefined}"
JOBS="${FASTCNN_SANITIZE_JOBS:-$(nproc 2>/dev/null || echo 2)}"
# The kernel tests, the optimizer kernels (test_optim), the fused layer sequences and reused
# buffers (test_nn), and non-finite values through every kernel (test_bad_inputs).
TESTS="${FASTCNN_SANITIZE_TESTS:-tests/test_conv2d.py tests/test_pool2d.py tests/test_linear.py \
tests/test_activation.py tests/test_loss.py tests/test_gemm.py tests/test_errors.py \
tests/test_threads.py tests/test_optim.py tests/test_nn.py tests/test_augment.py \
tests/test_batchnorm.py tests/test_resnet.py \
tests/test_bad_inputs.py::test_conv2d_propagates_nonfinite \
tests/test_bad_inputs.py::test_ops_propagate_nonfinite}"

CC_FOR_RUNTIME="${CXX:-g++}"
if ! "$CC_FOR_RUNTIME" --version 2>/dev/null | grep -qi 'g++\|gcc'; then
  echo "sanitize.sh: LD_PRELOAD needs GCC's libasan; set CXX to a g++ (got $CC_FOR_RUNTIME)" >&2
  exit 2
fi
LIBASAN="$("$CC_FOR_RUNTIME" -print-file-name=libasan.so)"
if [ ! -e "$LIBASAN" ]; then
  echo "sanitize.sh: libasan.so not found ($LIBASAN); install GCC's libasan" >&2
  exit 2
fi
# libstdc++ is preloaded too: ASan resolves the real __cxa_throw when it starts, and python does
# not link libstdc++, so without it the first C++ exception aborts in ASan's interceptor
# ("CHECK failed: ... real___cxa_throw != 0").
LIBSTDCXX="$("$CC_FOR_RUNTIME" -print-file-name=libstdc++.so.6)"
PRELOAD="$LIBASAN:$LIBSTDCXX"

# ---- build ----------------------------------------------------------------------------------
t0=$(date +%s)
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
# A build folder configured with another generator cannot be reconfigured: start it afresh.
if [ -f "$BUILD/CMakeCache.txt" ]; then
  want="Unix Makefiles"
  [ ${#generator[@]} -gt 0 ] && want="Ninja"
  grep -qx "CMAKE_GENERATOR:INTERNAL=$want" "$BUILD/CMakeCache.txt" || rm -rf "$BUILD"
fi
cmake -S "$ROOT" -B "$BUILD" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER="$CC_FOR_RUNTIME" \
  -DFASTCNN_SANITIZE="$SANITIZERS" \
  -DPython_EXECUTABLE="$PY_EXE" \
  -Dpybind11_DIR="$("$PYTHON" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$BUILD" -j "$JOBS"
t1=$(date +%s)

so=("$BUILD"/_C*.so)
if [ ! -f "${so[0]}" ]; then
  echo "sanitize.sh: no _C*.so in $BUILD after the build" >&2
  exit 2
fi

# ---- stage a copy of the package with the sanitized extension --------------------------------
STAGE="$(mktemp -d "${TMPDIR:-/tmp}/fastcnn-sanitize.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/site" "$STAGE/cwd"
cp -R "$ROOT/fastcnn" "$STAGE/site/fastcnn"
rm -rf "$STAGE/site/fastcnn"/_C*.so "$STAGE/site/fastcnn/__pycache__"  # the copies, not the tree's
cp "${so[0]}" "$STAGE/site/fastcnn/"

export PYTHONPATH="$STAGE/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONMALLOC=malloc  # every Python allocation through ASan's malloc (redzones)
export PYTHONDONTWRITEBYTECODE=1
# detect_leaks=0: CPython keeps memory alive at exit by design. allocator_may_return_null=1:
# a huge request (tests of lying headers) becomes MemoryError instead of an ASan abort.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1:\
check_initialization_order=1:detect_stack_use_after_return=1\
${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:report_error_type=1\
${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
# An aborted pytest loses what it captured from file descriptor 2, so pytest captures at the
# Python level only (--capture=sys, below) and reports written to fd 2 reach this script's
# stderr. ASan also writes each report to a file (one per process, .PID), kept in the build
# folder and printed at the end. (UBSan ignores log_path while libasan is loaded: its reports
# are on stderr only.)
LOGS="$BUILD/sanitizer-logs"
rm -rf "$LOGS" && mkdir -p "$LOGS"
export ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$LOGS/asan"
export UBSAN_OPTIONS="$UBSAN_OPTIONS:log_path=$LOGS/ubsan"

# ---- self-test: a planted bug must be reported, or "no findings" would mean nothing ----------
CANARY="$STAGE/canary"
mkdir -p "$CANARY"
cat > "$CANARY/canary.cpp" <<'CPP'
#include <climits>
#include <cstdlib>
extern "C" int canary_heap(int i) {  // i = 4: reads one int past the allocation
  int* p = static_cast<int*>(std::malloc(4 * sizeof(int)));
  int v = p[i];
  std::free(p);
  return v;
}
extern "C" int canary_ub(int i) { return INT_MAX + i; }  // i = 1: signed overflow
CPP
canary() {  # canary SANITIZER FUNCTION ARG PATTERN: the planted bug must stop python, logged
  local san="$1" log="$CANARY/$2"
  shift
  # One sanitizer per canary: UBSan's object-size check would otherwise halt on the heap read
  # before ASan reports it.
  "$CC_FOR_RUNTIME" -shared -fPIC -g -O1 -fsanitize="$san" -o "$CANARY/lib$san.so" \
    "$CANARY/canary.cpp"
  if (ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$log" LD_PRELOAD="$PRELOAD" "$PY_EXE" -c \
    'import ctypes, sys; getattr(ctypes.CDLL(sys.argv[1]), sys.argv[2])(int(sys.argv[3]))' \
    "$CANARY/lib$san.so" "$1" "$2"; exit $?) >"$log.stderr" 2>&1; then  # (exit: bash's own
    # "Aborted" notice goes to the log too)
    echo "sanitize.sh: self-test failed: $1($2) ran to the end; the setup is broken" >&2
    exit 2
  fi
  if ! cat "$log".* 2>/dev/null | grep -q "$3"; then
    echo "sanitize.sh: self-test failed: no '$3' report from $1($2); the setup is broken" >&2
    exit 2
  fi
}
case ",$SANITIZERS," in *,address,*) canary address canary_heap 4 heap-buffer-overflow ;; esac
case ",$SANITIZERS," in *,undefined,*) canary undefined canary_ub 1 "signed integer overflow" ;; esac
echo "sanitize.sh: self-test: planted bugs are reported"

cd "$STAGE/cwd"
# The interpreter must pick up the staged package and its sanitized extension, nothing else.
LD_PRELOAD="$PRELOAD" "$PY_EXE" - "$STAGE/site" <<'EOF'
import sys, fastcnn, fastcnn._C as C
stage = sys.argv[1]
assert fastcnn.__file__.startswith(stage), fastcnn.__file__
assert C.__file__.startswith(stage), C.__file__
print(f"sanitize.sh: testing {C.__file__}")
EOF

test_paths=()
for t in $TESTS; do test_paths+=("$ROOT/$t"); done
status=0
LD_PRELOAD="$PRELOAD" "$PY_EXE" -m pytest -c "$ROOT/pyproject.toml" --rootdir "$ROOT" \
  -p no:cacheprovider --capture=sys -q "${test_paths[@]}" "$@" || status=$?
t2=$(date +%s)
reports=("$LOGS"/*)
if [ -e "${reports[0]}" ]; then
  echo "sanitize.sh: sanitizer reports (kept in $LOGS):"
  for r in "${reports[@]}"; do echo "==== $r"; cat "$r"; done
  [ "$status" -eq 0 ] && status=1
fi
echo "sanitize.sh: build $((t1 - t0)) s, tests $((t2 - t1)) s, exit status $status"
exit "$status"
