"""ONNX int8: the quantized encoders agree with float32 on real windows of the bundled clip, the
accuracy guard keeps an encoder that quantizes badly in float, and bad requests are clear errors.

Tolerance (int8 is an approximation, unlike the other backends): on held-out windows every output
correlates >= 0.99 with eager fp32 and the sound map differs by at most 0.05 (cosines in [-1, 1]).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("onnxruntime")

from streamloc.backends import create_backend  # noqa: E402
from streamloc.backends.quantize import calibration_hash, calibration_windows, module_nodes  # noqa: E402
from streamloc.bundled import BUNDLED_MODEL, bundled_asset  # noqa: E402
from streamloc.errors import BackendError  # noqa: E402
from streamloc.models import create_model  # noqa: E402
from streamloc.models.checkpoint import load_checkpoint  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
              pytest.mark.usefixtures("one_thread_module")]
MIN_CORR, SOUND_MAP_ATOL = 0.99, 0.05


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("int8-cache")


def _agree(model, backend, windows):
    for images, specs in windows:
        with torch.inference_mode():
            ref = model(images, specs)
        got = backend(images, specs)
        for name, r, g in zip(model.output_names, ref, got):
            assert g.dtype == torch.float32 and g.shape == r.shape
            corr = np.corrcoef(r.numpy().ravel(), g.numpy().ravel())[0, 1]
            assert corr >= MIN_CORR, (name, corr)
        assert float((ref[0] - got[0]).abs().max()) <= SOUND_MAP_ATOL


def test_int8_resnet_pair_matches_fp32(cache):
    torch.manual_seed(0)
    model = create_model("noprior", image={"size": (112, 112)}).eval()
    backend = create_backend("onnx", model, precision="int8", threads=1, cache_dir=cache,
                             calibration=calibration_windows(model, count=6))
    assert backend.quantization["float_modules"] == []  # the whole ResNet-18 pair runs in int8
    graph = onnx.load(str(backend.path)).graph
    weights = {t.name: t for t in graph.initializer}
    int8_convs = 0
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type == "Conv":
            dq = producers.get(node.input[1])
            if dq is not None and dq.op_type == "DequantizeLinear" and weights[dq.input[0]].data_type == onnx.TensorProto.INT8:
                int8_convs += 1
    assert int8_convs == sum(1 for n in graph.node if n.op_type == "Conv") >= 40
    _agree(model, backend, calibration_windows(model, count=3))  # other window ends than calibration


@pytest.mark.slow
def test_int8_guard_keeps_the_efficientnet_in_float(cache):
    """The demo model's frozen EfficientNet-Lite0 correlates only ~0.83 with float in int8; the
    guard keeps it in float32 and quantizes the audio ResNet-18."""
    with torch.inference_mode():
        model = load_checkpoint(str(bundled_asset(BUNDLED_MODEL))).eval()
    backend = create_backend("onnx", model, precision="int8", threads=1, cache_dir=cache)
    q = backend.quantization
    assert q["float_modules"] == ["imgnet"] and q["agreement"] >= 0.99
    assert q["tried"][0] == {"float_modules": [], "agreement": pytest.approx(q["tried"][0]["agreement"])}
    assert q["tried"][0]["agreement"] < 0.99
    _agree(model, backend, calibration_windows(model, count=3))
    again = create_backend("onnx", model, precision="int8", threads=1, cache_dir=cache)
    assert not again.exported and again.quantization == q  # from the cache, with its report


def test_int8_cache_key_names_precision_and_calibration(cache):
    torch.manual_seed(0)
    model = create_model("noprior", image={"size": (64, 64)}).eval()
    a, b = calibration_windows(model, count=2), calibration_windows(model, count=3)
    assert calibration_hash(a) != calibration_hash(b) and calibration_hash(a) == calibration_hash(calibration_windows(model, count=2))
    fp32 = create_backend("onnx", model, threads=1, cache_dir=cache)
    q_a = create_backend("onnx", model, precision="int8", threads=1, cache_dir=cache, calibration=a)
    q_b = create_backend("onnx", model, precision="int8", threads=1, cache_dir=cache, calibration=b)
    assert len({fp32.path, q_a.path, q_b.path}) == 3
    assert q_a.artifact.parts["precision"] == "int8" and "quantizer" in q_a.artifact.parts


def test_module_nodes_follow_the_model_structure(tmp_path):
    from streamloc.backends.onnx import export_onnx

    torch.manual_seed(0)
    model = create_model("noprior", image={"size": (64, 64)}).eval()
    nodes = module_nodes(export_onnx(model, tmp_path / "m.onnx"))
    assert set(nodes) == {"imgnet", "audnet"}
    assert len(nodes["imgnet"]) == len(nodes["audnet"]) == 20  # ResNet-18: 17 convs + 3 downsamples


@pytest.mark.parametrize("kwargs,match", [
    ({"precision": "int4"}, "runs fp32 or int8"),
    ({"calibration": []}, "for precision='int8' only"),
    ({"precision": "int8", "calibration": []}, "at least one calibration window"),
])
def test_int8_bad_requests(kwargs, match, cache):
    model = create_model("noprior", image={"size": (64, 64)}).eval()
    with pytest.raises(BackendError, match=match):
        create_backend("onnx", model, threads=1, cache_dir=cache, **kwargs)


def test_int8_guard_refuses_what_it_cannot_make_agree(tmp_path, monkeypatch):
    from streamloc.backends import quantize

    model = create_model("noprior", image={"size": (64, 64)}).eval()
    monkeypatch.setitem(quantize.QUANTIZER, "min_agreement", 1.5)  # no correlation reaches it
    with pytest.raises(BackendError, match="run this model in fp32"):
        create_backend("onnx", model, precision="int8", threads=1, cache_dir=tmp_path,
                       calibration=calibration_windows(model, count=1))
    assert not list((tmp_path / "onnx").glob("*.onnx"))  # nothing half-written is left in the cache


def test_calibration_clip_errors(tmp_path):
    model = create_model("noprior", image={"size": (64, 64)})
    bad = tmp_path / "not_media.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(BackendError, match="cannot read calibration clip"):
        calibration_windows(model, clip=bad)
    with pytest.raises(BackendError, match="at least one window"):
        calibration_windows(model, count=0)
