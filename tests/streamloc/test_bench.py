"""`streamloc bench`: the JSON report has the documented keys and shapes; bad options are one
clear line. Timings are never asserted (they depend on the machine's load)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streamloc.bench import REPORT_KEYS, parse_backend_spec, percentiles
from streamloc.cli import main
from streamloc.errors import InputError
from streamloc.models import create_model
from streamloc.models.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[2]
STATS = {"n", "p50", "p90", "p99", "max", "mean", "jitter_std"}


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()  # `--threads 1` sets torch's global thread count
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    # tau1 = 1 keeps every identified object, so the IOI and frame-size masks are timed too
    torch.manual_seed(0)
    model = create_model("noprior", image={"size": (64, 64)}, audio={"window_seconds": 1.0}, tau1=1.0)
    path = tmp_path_factory.mktemp("bench") / "small.safetensors"
    save_checkpoint(model, path)
    return path


def test_cli_bench_writes_the_documented_json(small_checkpoint, tmp_path, capsys):
    out = tmp_path / "tmp.json"
    argv = ["bench", "--ticks", "5", "--warmup", "1", "--backend", "eager", "--out", str(out),
            "--model", str(small_checkpoint), "--streams", "1", "--streams", "2", "--no-peak", "--threads", "1"]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert tuple(report) == REPORT_KEYS
    assert report["config"]["ticks"] == 5 and report["config"]["backends"] == ["eager:fp32"]
    assert report["config"]["streams"] == [1, 2] and report["config"]["image"] == [64, 64]
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    assert report["environment"]["torch"] == torch.__version__ and "onnxruntime" in report["environment"]
    assert re.fullmatch(r"[0-9a-f]{64}", report["input_sha256"])
    assert report["equivalence_max_abs_vs_eager"] == {"eager:fp32": 0.0}

    assert set(report["encoder_ms"]) == {"eager:fp32"}
    assert set(report["encoder_ms"]["eager:fp32"]) == STATS and report["encoder_ms"]["eager:fp32"]["n"] == 5
    assert set(report["end_to_end_ms"]) == {"paper_baseline", "eager:fp32"}
    for entry in report["end_to_end_ms"].values():
        assert set(entry["wall_ms"]) == STATS and entry["wall_ms"]["n"] == 5
        assert {"preprocess", "encoder", "postprocess", "total"} <= set(entry["stages_ms"])
        assert all(s["n"] == 5 for s in entry["stages_ms"].values())

    throughput = report["throughput"]
    assert set(throughput) == {"eager:fp32", "paper_baseline"}
    for label, per_n in throughput.items():
        assert set(per_n) == {"1", "2"}
        kinds = {"e2e"} if label == "paper_baseline" else {"encoder", "e2e"}
        for entry in per_n.values():
            assert set(entry) == kinds
            assert all(e["windows_per_s"] > 0 and set(e["batch_latency_ms"]) == STATS for e in entry.values())

    ratios = report["ratios"]
    assert set(ratios["e2e_speedup_vs_paper_baseline_p50"]) == {"eager:fp32"}
    assert set(ratios["throughput_vs_paper_baseline"]["eager:fp32"]) == {"1", "2"}
    assert "e2e_p50_over_flop_limit" not in ratios  # --no-peak: no FLOP limit
    assert report["flops"]["encoder_pair_batch1"] > 0


@pytest.mark.parametrize("args,match", [
    (["--backend", "tflite"], "unknown backend 'tflite'"),
    (["--backend", "eager:int4"], "unknown precision 'int4'"),
    (["--backend", "eager:int8"], "int8 is an onnx precision on the CPU"),
    (["--backend", "eager:fp16"], "fp16 needs a CUDA device"),
    (["--streams", "0"], "--streams must be ≥ 1"),
    (["--ticks", "0"], "--ticks must be ≥ 1"),
])
def test_cli_bench_bad_options(args, match, tmp_path, capsys):
    out = tmp_path / "never.json"
    assert main(["bench", *args, "--out", str(out), "--no-peak"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("streamloc: error:") and re.search(match, err), err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cli_bench_cuda_without_cuda(tmp_path, capsys):
    assert main(["bench", "--device", "cuda", "--out", str(tmp_path / "x.json")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("text,expected", [
    ("eager", ("eager", "fp32")), ("eager:bf16", ("eager", "bf16")), ("tensorrt:fp16", ("tensorrt", "fp16")),
    ("onnx:fp32", ("onnx", "fp32")), ("compile", ("compile", "fp32")),
])
def test_parse_backend_spec(text, expected):
    assert parse_backend_spec(text) == expected


def test_parse_backend_spec_rejects_unknown_names():
    with pytest.raises(InputError, match="backends: eager, compile, onnx, tensorrt"):
        parse_backend_spec("openvino")


def test_percentiles_in_ms():
    p = percentiles([1e6] * 98 + [5e6, 10e6])
    assert (p["n"], p["p50"], p["max"]) == (100, 1.0, 10.0) and p["p99"] > 1.0 and p["jitter_std"] > 0


def test_benchmark_script_is_the_same_command():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_backends.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "--streams N" in run.stdout and "backends_cpu.json" in run.stdout


def test_int8_peak_and_ratios():
    from streamloc.bench import _ratios, peak_int8_gemm_ops

    peak = peak_int8_gemm_ops(1, sizes=(128, 256), repeats=2)
    assert peak["impl"] == "onnxruntime.MatMulInteger" and set(peak["by_size"]) == {"128", "256"}
    assert peak["ops_per_s"] == max(peak["by_size"].values()) > 0
    e2e = {"paper_baseline": {"wall_ms": {"p50": 40.0, "p99": 50.0}},
           "onnx:fp32": {"wall_ms": {"p50": 30.0, "p99": 35.0}}, "onnx:int8": {"wall_ms": {"p50": 12.0, "p99": 15.0}}}
    enc = {"onnx:fp32": {"p50": 20.0}, "onnx:int8": {"p50": 6.0}}
    r = _ratios(enc, e2e, {}, 20.0, 5.0)
    assert r["e2e_speedup_vs_paper_baseline_p50"] == {"onnx:fp32": 40 / 30, "onnx:int8": 40 / 12}
    assert r["e2e_p50_over_flop_limit"]["onnx:int8"] == 12 / 20
    assert r["e2e_p50_over_int8_flop_limit"] == {"onnx:int8": 12 / 5}  # int8 labels only



@pytest.fixture
def broken_inductor(tmp_path, monkeypatch):
    """A real compile-backend build failure: inductor pointed at a C++ compiler that does not work,
    with empty caches so that nothing compiled earlier in this process stands in for compiling."""
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    with inductor_config.patch({"cpp.cxx": (None, "/bin/false"), "fx_graph_cache": False}):
        yield


def test_a_backend_that_fails_to_build_is_reported_and_the_others_measured(small_checkpoint, tmp_path,
                                                                          broken_inductor, capsys):
    out = tmp_path / "partial.json"
    argv = ["bench", "--ticks", "3", "--warmup", "1", "--backend", "eager", "--backend", "compile", "--out", str(out),
            "--model", str(small_checkpoint), "--streams", "1", "--no-peak", "--no-baseline", "--threads", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["config"]["backends"] == ["eager:fp32"] and set(report["encoder_ms"]) == {"eager:fp32"}
    assert re.search(r"build failed: BackendError: .*C\+\+ compiler", report["skipped"]["compile:fp32"])
    assert "not measured:" in printed and "- compile:fp32: build failed" in printed


def test_no_backend_built_is_an_error(small_checkpoint, tmp_path, broken_inductor, capsys):
    out = tmp_path / "never.json"
    argv = ["bench", "--ticks", "2", "--backend", "compile", "--out", str(out), "--model", str(small_checkpoint),
            "--streams", "1", "--no-peak", "--no-baseline", "--threads", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no backend could be built: compile:fp32: build failed" in err
    assert not out.exists()
