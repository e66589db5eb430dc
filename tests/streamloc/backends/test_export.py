"""`streamloc export`: the ONNX file loads in ONNX Runtime with the model's names, static shapes and
metadata, and computes what eager fp32 computes; formats that cannot be produced here fail with one
clear line.

Tolerance: the outputs are cosine maps and unit features in [-1, 1]; ONNX Runtime on the CPU must
match eager fp32 within ATOL = 1e-4 absolute (measured ~3e-7). The export itself refuses files
worse than 1e-3 (``DEFAULT_ATOL``). TensorRT is checked on CUDA only (marker ``gpu``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streamloc.backends.cache import model_hash
from streamloc.backends.export import DEFAULT_ATOL, export_model, load_model
from streamloc.cli import main
from streamloc.errors import BackendError, InputError
from streamloc.models import create_model
from streamloc.models.checkpoint import save_checkpoint

ATOL = 1e-4
SMALL = {"image": {"size": (64, 64)}, "audio": {"window_seconds": 1.0}}

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
              pytest.mark.usefixtures("one_thread_module")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("noprior", **SMALL).eval()
    path = tmp_path_factory.mktemp("ckpt") / "small.safetensors"
    save_checkpoint(model, path, provenance={"test": "export"})
    return path


def _has_tensorrt() -> bool:
    from streamloc.backends.tensorrt import tensorrt_unavailable_reason

    return tensorrt_unavailable_reason() is None


@pytest.mark.parametrize("source,extra,batch", [
    ("checkpoint", [], 1),              # 64x64 picture, 1-s window (from the checkpoint's config)
    ("checkpoint", ["--batch", "2"], 2),
    ("noprior", ["--image-size", "64"], 1),  # an untrained registry model, 3-s window
])
def test_cli_export_onnx_matches_eager(source, extra, batch, checkpoint, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    spec = str(checkpoint) if source == "checkpoint" else source
    out = tmp_path / "model.onnx"
    torch.manual_seed(0)  # an untrained registry model: the same seed gives the same weights below
    assert main(["export", "--format", "onnx", spec, str(out), *extra]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "max abs diff" in printed
    torch.manual_seed(0)
    model = load_model(spec, image_size=64).eval()

    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["method"] == "noprior" and meta["precision"] == "fp32"
    assert meta["model_hash"] == model_hash(model)
    assert json.loads(meta["config"])["image"]["size"] == [64, 64]
    assert int(meta["opset"]) == proto.opset_import[0].version
    shapes = json.loads(meta["input_shapes"])
    assert shapes["images"] == [batch, 3, 64, 64]
    assert shapes["spectrograms"] == [batch, *model.spectrogram_shape()]

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images", "spectrograms"]
    assert [o.name for o in session.get_outputs()] == list(model.output_names)
    assert [list(i.shape) for i in session.get_inputs()] == [shapes["images"], shapes["spectrograms"]]
    g = torch.Generator().manual_seed(7)
    images = torch.randn(shapes["images"], generator=g)
    specs = torch.randn(shapes["spectrograms"], generator=g)
    got = session.run(None, {"images": images.numpy(), "spectrograms": specs.numpy()})
    with torch.inference_mode():
        ref = model(images, specs)
    for g_out, r_out in zip(got, ref):
        assert g_out.shape == tuple(r_out.shape)
        np.testing.assert_allclose(g_out, r_out.numpy(), atol=ATOL, rtol=0)


def test_export_model_report_and_metadata(checkpoint, tmp_path):
    model = load_model(checkpoint)
    report = export_model(model, tmp_path / "m.onnx")
    assert report.path.is_file() and report.format == "onnx" and report.batch == 1
    assert set(report.max_abs_diff) == set(model.output_names)
    assert max(report.max_abs_diff.values()) <= ATOL and report.atol == DEFAULT_ATOL["fp32"]
    assert report.model_hash == model_hash(model) and report.input_names == ("images", "spectrograms")
    assert "CPUExecutionProvider" in report.runtime and "max abs diff" in report.summary()


def test_export_check_failure_is_an_error(checkpoint, tmp_path):
    with pytest.raises(BackendError, match="differ from eager fp32"):
        export_model(load_model(checkpoint), tmp_path / "m.onnx", atol=-1.0)  # no difference passes


@pytest.mark.skipif(_has_tensorrt(), reason="torch-tensorrt and CUDA are available here")
@pytest.mark.parametrize("extra", [[], ["--device", "cuda", "--precision", "fp16"]])
def test_cli_export_tensorrt_without_cuda_is_one_clear_line(extra, checkpoint, tmp_path, capsys):
    out = tmp_path / "model.ep"
    assert main(["export", "--format", "tensorrt", str(checkpoint), str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("streamloc: error: --format tensorrt cannot run here:")
    assert "pip install 'streamloc[tensorrt]'" in err
    assert not out.exists()


@pytest.mark.parametrize("args,match", [
    (["--format", "onnx", "{ckpt}", "{tmp}/m.onnx", "--precision", "fp16"], "fp32 or int8.*trtexec"),
    (["--format", "tensorrt", "{ckpt}", "{tmp}/m.ep", "--precision", "int8"], "int8 is --format onnx"),
    (["--format", "onnx", "{ckpt}", "{tmp}/m.onnx", "--calibration", "{ckpt}"], "--calibration is for --precision int8"),
    (["--format", "onnx", "no-such-model", "{tmp}/m.onnx"], "neither a checkpoint file nor a model name"),
    (["--format", "onnx", "{ckpt}", "{tmp}/missing/m.onnx"], "does not exist"),
    (["--format", "onnx", "{ckpt}", "{tmp}/m.onnx", "--batch", "0"], "batch must be a positive integer"),
])
def test_cli_export_errors(args, match, checkpoint, tmp_path, capsys):
    args = [a.format(ckpt=checkpoint, tmp=tmp_path) for a in args]
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("streamloc: error:")
    assert __import__("re").search(match, err), err


def test_cli_export_onnx_int8(checkpoint, tmp_path, capsys):
    """int8: calibrated on the bundled clip, checked on its real windows, metadata says what it did."""
    import onnx
    import onnxruntime as ort

    from streamloc.backends.quantize import calibration_windows

    out = tmp_path / "int8.onnx"
    assert main(["export", "--format", "onnx", "--precision", "int8", str(checkpoint), str(out)]) == 0
    assert "int8" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["precision"] == "int8" and meta["calibration"] == "bundled demo clip"
    q = json.loads(meta["quantization"])
    assert q["agreement"] >= 0.99 and q["tried"][-1]["float_modules"] == q["float_modules"]
    model = load_model(checkpoint).eval()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for images, specs in calibration_windows(model, count=3):
        got = session.run(None, {"images": images.numpy(), "spectrograms": specs.numpy()})
        with torch.inference_mode():
            ref = model(images, specs)
        assert np.abs(got[0] - ref[0].numpy()).max() <= DEFAULT_ATOL["int8"]
        for g_out, r_out in zip(got, ref):
            assert np.corrcoef(g_out.ravel(), r_out.numpy().ravel())[0, 1] >= 0.99


def test_load_model_image_size_rebuilds_a_checkpoint(checkpoint):
    model = load_model(checkpoint, image_size=96)
    assert model.config.image.size == (96, 96)
    original = load_model(checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values()))
    with pytest.raises(InputError, match="neither"):
        load_model("/nonexistent/model.safetensors")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_tensorrt_matches_eager(precision, checkpoint, tmp_path, monkeypatch):
    torch_tensorrt = pytest.importorskip("torch_tensorrt", reason="torch-tensorrt is not installed")
    monkeypatch.setenv("STREAMLOC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "model.ep"
    assert main(["export", "--format", "tensorrt", str(checkpoint), str(out), "--precision", precision]) == 0
    meta = json.loads((tmp_path / "model.ep.json").read_text())
    assert meta["precision"] == precision and meta["gpu_arch"].startswith("sm_")
    program = torch_tensorrt.load(str(out))
    module = program.module() if hasattr(program, "module") else program
    model = load_model(checkpoint).cuda()
    images, specs = (t.cuda() for t in model.example_inputs(1))
    with torch.no_grad():
        got = module(images, specs)
        ref = model(images, specs)
    for g_out, r_out in zip(got, ref):
        assert float((g_out.float() - r_out).abs().max()) <= DEFAULT_ATOL[precision]
