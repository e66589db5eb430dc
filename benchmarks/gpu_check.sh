#!/usr/bin/env bash
# The GPU checks of streamloc as one prepared run: the `gpu`-marked tests and `streamloc bench` on
# CUDA (latency per backend at batch 1, batched multi-stream throughput), results under $OUT.
#
# Written for a lent GPU machine that runs the repository with its own python3 (a CUDA torch, no
# package index): on this machine first
#     bash benchmarks/gpu_check.sh wheels        # the few wheels that image lacks, into .whl/
# then, as the device call (carry: .whl; timeout_s 590 — the steps' own limits add up to 570 s):
#     bash benchmarks/gpu_check.sh run
# and copy $OUT/*.json to benchmarks/results/ (`gpu_` names, the device name is inside).
#
# What the image lacks: `soxr` (the Localizer resamples with it). torch-tensorrt cannot be brought:
# its `tensorrt-cu13-libs` dependency is, on PyPI, a 681-byte stub that downloads the real
# libraries from NVIDIA's own index at install time, which such a machine cannot reach; nor can
# onnxruntime-gpu (a 256 MB wheel, over the 64 MiB a device call carries). The run measures the
# backends that are importable there and says which were skipped and why (the report's `skipped`).
#
# A dry run of the whole script on a CPU: GPU_CHECK_DEVICE=cpu GPU_CHECK_TICKS=20 GPU_CHECK_STREAMS=2
# bash benchmarks/gpu_check.sh run   (the gpu tests are then skipped, as they must be without CUDA).
set -uo pipefail
cd "$(dirname "$0")/.."

mode=${1:-run}
PY=${PYTHON:-python3}

if [ "$mode" = wheels ]; then
  # The device image's Python (3.12) unless told otherwise (a dry run here: GPU_CHECK_PYVER=3.11).
  pyver=${GPU_CHECK_PYVER:-3.12}
  rm -rf .whl && mkdir -p .whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "soxr>=0.5" || exit 1
  ls -la .whl
  exit 0
fi
[ "$mode" = run ] || { echo "usage: bash benchmarks/gpu_check.sh {wheels|run}" >&2; exit 2; }

OUT=${OUT:-benchmarks/results/tmp/gpu_check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
TICKS=${GPU_CHECK_TICKS:-1000}
STREAMS=${GPU_CHECK_STREAMS:-8 32 64}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OPENCV_LOG_LEVEL=ERROR
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/streamloc-site \
    .whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/streamloc-site"
fi
# Inductor's kernel cache outside the work tree, so that a second run on a still-warm machine reuses it.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/streamloc-inductor}

status=0
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
  "$PY" - <<'EOF'
import importlib, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
for name in ("numba", "numpy", "cv2", "soxr", "onnxruntime", "triton", "torch_tensorrt", "scipy"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:  # noqa: BLE001
        print(name, "missing:", type(exc).__name__, exc)
EOF
  "$PY" -m streamloc info  # each backend's availability, or why not
} 2>&1 | tee "$OUT/environment.txt"

# 1. The GPU tests (equivalence of each backend with eager fp32 on CUDA, GPU preprocessing, one
#    host sync per tick). -rs lists every skip with its reason. The one `slow` GPU test (compile's
#    default max-autotune mode) is left to step 2, which builds that backend for the full model and
#    records its difference from eager fp32 (`equivalence_max_abs_vs_eager`).
timeout 170 "$PY" -m pytest -q -rs -m "gpu and not slow" -p no:cacheprovider \
  tests/streamloc/backends/test_backends.py tests/streamloc/backends/test_export.py \
  tests/streamloc/test_multistream.py tests/streamloc/test_features.py \
  2>&1 | tee "$OUT/gpu_tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# 2. Latency at batch 1: every backend available there, the paper-style baseline in the same run.
# (A CPU dry run names two backends: onnx:int8 calibrates on the demo clip, which needs PyAV.)
latency_backends=""
[ "$DEVICE" = cpu ] && latency_backends="--backend eager --backend onnx"
timeout 250 "$PY" -m streamloc bench --device "$DEVICE" $latency_backends --ticks "$TICKS" --streams 1 \
  --out "$OUT/bench_latency.json" 2>&1 | tee "$OUT/bench_latency.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# 3. Batched multi-stream throughput (N sources in one encoder call); the compile backend is left
#    out here because max-autotune would compile (minutes) once per batch size.
precisions="--backend eager --backend eager:fp16 --backend eager:bf16"
[ "$DEVICE" = cpu ] && precisions="--backend eager"
timeout 150 "$PY" -m streamloc bench --device "$DEVICE" $precisions --ticks "$((TICKS / 2))" --no-peak \
  $(for n in $STREAMS; do echo --streams "$n"; done) --throughput-ticks "$((TICKS / 10 > 5 ? TICKS / 10 : 5))" \
  --out "$OUT/bench_throughput.json" 2>&1 | tee "$OUT/bench_throughput.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

ls -la "$OUT"
exit $status
