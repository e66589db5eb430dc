"""Backends: every compiled backend computes what eager fp32 computes, the caches are reused and
repaired, and the backends that cannot run here say why.

Tolerance: outputs are cosine maps, cosine-weighted unit features and their means (all in
[-1, 1]); compile and onnx must match eager fp32 within ATOL = 1e-4 absolute (measured ~1e-6 on
CPU). GPU-only checks are marked ``gpu`` (skipped without CUDA by tests/conftest.py).
"""

from __future__ import annotations

import argparse
import doctest
import os
import shutil

import numpy as np
import pytest
import torch

from streamloc import Localizer
from streamloc.backends import (
    BACKENDS,
    EagerBackend,
    add_backend_arguments,
    available_backends,
    backend_from_args,
    create_backend,
)
from streamloc.backends import eager as eager_backend
from streamloc.backends import onnx as onnx_backend
from streamloc.backends.eager import cpu_has_native_bf16
from streamloc.backends.cache import Artifact, StaticShapes, cache_key, cache_root, file_sha256, model_hash
from streamloc.errors import BackendError, InputError
from streamloc.models import create_model

ATOL = 1e-4  # CPU compile / onnx vs eager fp32, absolute, on values in [-1, 1]
SMALL = {"size": (112, 112)}

# torch's ONNX exporter imports TorchScript helpers that warn about their own deprecation
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI machine has 2 shared cores; oversubscription is slower
    yield
    torch.set_num_threads(before)


def _small(method: str, **cfg):
    torch.manual_seed(0)
    if method == "ezvsl":
        cfg.setdefault("object_prior", "none")
    return create_model(method, image=SMALL, **cfg).eval()


def _inputs(model, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    images, specs = model.example_inputs(batch)
    return torch.randn(images.shape, generator=g), torch.randn(specs.shape, generator=g)


def _max_diffs(outputs, reference):
    assert len(outputs) == len(reference)
    diffs = []
    for o, r in zip(outputs, reference):
        assert o.shape == r.shape and o.dtype == torch.float32 and o.device.type == r.device.type
        diffs.append(float((o.detach().cpu() - r.detach().cpu()).abs().max()))
    return diffs


@pytest.fixture(scope="module")
def models():
    return {"noprior": _small("noprior"), "ezvsl": _small("ezvsl")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("streamloc-cache")


@pytest.fixture(scope="module")
def onnx_small(models, cache):
    return {name: create_backend("onnx", m, batch=1, cache_dir=cache, threads=1) for name, m in models.items()}


@pytest.fixture(scope="module")
def full_model():
    torch.manual_seed(0)
    # tau1 = 1 disables the background rejection, so even a random-init model reports objects
    return create_model("noprior", tau1=1.0).eval()


@pytest.fixture(scope="module")
def onnx_full(full_model, cache):
    return create_backend("onnx", full_model, batch=1, cache_dir=cache, threads=1)


# -- equivalence ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["noprior", "ezvsl"])
def test_onnx_matches_eager(method, models, onnx_small):
    model, backend = models[method], onnx_small[method]
    assert backend.exported and backend.providers == ("CPUExecutionProvider",)
    assert backend.path.suffix == ".onnx" and backend.path.is_file()
    eager = EagerBackend(model)
    for seed in (0, 1):
        x = _inputs(model, 1, seed)
        outputs = backend(*x)
        assert all(isinstance(o, torch.Tensor) and o.device.type == "cpu" for o in outputs)
        assert max(_max_diffs(outputs, eager(*x))) <= ATOL


def test_onnx_runs_any_batch_through_its_static_batch(models, onnx_small):
    model, backend = models["noprior"], onnx_small["noprior"]
    x = _inputs(model, 3, 5)  # batch-1 graph, 3 items: three chunks
    assert max(_max_diffs(backend(*x), EagerBackend(model)(*x))) <= ATOL


def test_onnx_rejects_wrong_item_shapes(models, onnx_small):
    images, specs = _inputs(models["noprior"], 1, 0)
    with pytest.raises(InputError, match="built for"):
        onnx_small["noprior"](images[..., :64], specs)


def test_onnx_full_size_matches_eager(full_model, onnx_full):
    x = _inputs(full_model, 1, 2)
    assert tuple(x[0].shape) == (1, 3, 224, 224)
    diffs = _max_diffs(onnx_full(*x), EagerBackend(full_model)(*x))
    assert max(diffs) <= ATOL, diffs


def test_ioi_result_identical_for_eager_and_onnx(full_model, onnx_full):
    eager = EagerBackend(full_model)
    seen_objects = 0
    for seed in range(3):
        x = _inputs(full_model, 1, 10 + seed)
        results = []
        for outputs in (eager(*x), onnx_full(*x)):
            item = {name: o[0].numpy() for name, o in zip(full_model.output_names, outputs)}
            results.append(full_model.postprocess(item)[1])
        ref, got = results
        assert len(got) == len(ref)
        seen_objects += len(ref)
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a.cells, b.cells)
            assert abs(a.score - b.score) <= ATOL
    assert seen_objects > 0


def test_localizer_with_onnx_backend(full_model, onnx_full):
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    audio = (0.2 * rng.standard_normal(3 * 48000)).astype(np.float32)
    ref = Localizer(full_model).localize(frame, audio, 48000)
    got = Localizer(full_model, backend=onnx_full).localize(frame, audio, 48000)
    assert len(got.objects) == len(ref.objects) > 0
    np.testing.assert_allclose(got.sound_map, ref.sound_map, atol=ATOL)
    for a, b in zip(ref.objects, got.objects):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.box == b.box


@pytest.mark.parametrize("method,freezing", [("noprior", False), ("ezvsl", True)])
def test_compile_matches_eager(method, freezing, models):
    model = models[method]
    backend = create_backend("compile", model, batch=1, freezing=freezing)
    assert backend.compile_seconds is not None and backend.freezing is freezing
    eager = EagerBackend(model)
    for seed in (0, 1):
        x = _inputs(model, 1, seed)
        assert max(_max_diffs(backend(*x), eager(*x))) <= ATOL
    if method == "noprior":  # padding path: a 1-item graph fed 2 items (2 chunks, no recompile)
        x = _inputs(model, 2, 3)
        assert max(_max_diffs(backend(*x), eager(*x))) <= ATOL
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend(*x)


# -- ONNX cache -------------------------------------------------------------------------------
def test_onnx_cache_is_reused(models, onnx_small, cache, monkeypatch):
    first = onnx_small["noprior"]
    mtime = first.path.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(onnx_backend, "export_onnx", lambda *a, **k: calls.append(1))
    again = create_backend("onnx", models["noprior"], batch=1, cache_dir=cache, threads=1)
    assert not again.exported and calls == []
    assert again.path == first.path and again.path.stat().st_mtime_ns == mtime
    x = _inputs(models["noprior"], 1, 4)
    assert max(_max_diffs(again(*x), first(*x))) == 0.0
    # a different model (one weight changed) is a different key
    other = _small("noprior")
    with torch.no_grad():
        other.audnet.conv1.weight.add_(1e-3)
    assert model_hash(other) != model_hash(models["noprior"])


def test_onnx_corrupt_cache_is_rebuilt(models, onnx_small, tmp_path):
    src = onnx_small["noprior"].artifact
    for p in (src.path, src.meta_path):  # a private copy of the valid cache entry
        (tmp_path / "onnx").mkdir(exist_ok=True)
        shutil.copy2(p, tmp_path / "onnx" / p.name)
    bad = tmp_path / "onnx" / src.path.name
    data = bytearray(bad.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\0" * 64  # flip bytes inside the weights
    bad.write_bytes(bytes(data[: len(data) - 1000]))  # and truncate
    artifact = Artifact("onnx", src.parts, ".onnx", root=tmp_path)
    assert artifact.path == bad and not artifact.valid()
    backend = create_backend("onnx", models["noprior"], batch=1, cache_dir=tmp_path, threads=1)
    assert backend.exported and backend.artifact.valid()
    assert file_sha256(backend.path) == backend.artifact.metadata()["sha256"]
    x = _inputs(models["noprior"], 1, 6)
    assert max(_max_diffs(backend(*x), EagerBackend(models["noprior"])(*x))) <= ATOL


def test_onnx_export_error_is_a_backend_error(models, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::frobnicate")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(BackendError, match="ONNX export of NoPrior .* failed: RuntimeError: unsupported") as info:
        create_backend("onnx", models["noprior"], batch=1, cache_dir=tmp_path)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert not list((tmp_path / "onnx").glob("*.onnx"))  # nothing half-written is left behind


def test_cache_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMLOC_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("STREAMLOC_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "streamloc"
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": (1, 2), "a": 1}) != cache_key({"a": 2, "b": [1, 2]})


def test_model_hash_tracks_config_and_weights():
    a, b = _small("noprior"), _small("noprior")
    assert model_hash(a) == model_hash(b)
    assert model_hash(_small("noprior", tau2=0.5)) != model_hash(a)


# -- static shapes ----------------------------------------------------------------------------
def test_static_shapes_pad_and_chunk():
    shapes = StaticShapes((4, 3, 2, 2), (4, 1, 5, 6))
    seen = []

    def fn(images, specs):
        seen.append(images.shape[0])
        return images.sum(dim=(1, 2, 3)), specs[:, 0, 0, :2] * 2

    images, specs = torch.randn(6, 3, 2, 2), torch.randn(6, 1, 5, 6)
    a, b = shapes.run(fn, images, specs)
    assert seen == [4, 4] and a.shape == (6,) and b.shape == (6, 2)
    torch.testing.assert_close(a, images.sum(dim=(1, 2, 3)))
    torch.testing.assert_close(b, specs[:, 0, 0, :2] * 2)
    with pytest.raises(InputError, match="differ in batch size"):
        shapes.run(fn, images, specs[:5])


# -- names, availability, errors --------------------------------------------------------------
def test_unknown_backend_lists_the_names():
    with pytest.raises(ValueError, match="unknown backend 'tflite'; backends: eager, compile, onnx, tensorrt"):
        create_backend("tflite", None)


def test_available_backends():
    names = available_backends()
    assert names[0] == "eager" and set(names) <= set(BACKENDS)
    assert {"compile", "onnx"} <= set(names)
    if not torch.cuda.is_available():
        assert "tensorrt" not in names


def test_tensorrt_without_cuda_is_a_backend_error(models, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendError, match="tensorrt backend cannot run here: CUDA is not available"):
        create_backend("tensorrt", models["noprior"])


def test_tensorrt_without_torch_tensorrt_is_a_backend_error(models, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch_tensorrt", None)  # import fails
    with pytest.raises(BackendError, match=r"torch-tensorrt is not installed: pip install 'streamloc\[tensorrt\]' "
                                           "next to a CUDA build of torch"):
        create_backend("tensorrt", models["noprior"], device="cuda")


BF16_ATOL = 0.05  # bf16 keeps 8 mantissa bits: ~0.4 % per operation on values in [-1, 1]


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 / AMX)")
@pytest.mark.parametrize("method", ["noprior", "ezvsl"])
def test_eager_bf16_cpu_matches_fp32(method, models):
    model = models[method]
    inputs = _inputs(model, 2, seed=3)
    reference = EagerBackend(model)(*inputs)
    outputs = EagerBackend(model, precision="bf16")(*inputs)
    diffs = _max_diffs(outputs, reference)
    assert max(diffs) < BF16_ATOL, diffs
    assert max(diffs) > 0  # it really ran in bf16


def test_eager_precision_checks(models, monkeypatch):
    with pytest.raises(BackendError, match="fp16 autocast is only supported on CUDA"):
        EagerBackend(models["noprior"], precision="fp16")
    monkeypatch.setattr(eager_backend, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(BackendError, match="no native bfloat16"):
        EagerBackend(models["noprior"], precision="bf16")


def test_cpu_only_options_are_checked(models):
    with pytest.raises(BackendError, match="runs fp32 or int8"):
        create_backend("onnx", models["noprior"], precision="fp16")
    with pytest.raises(BackendError, match="fp32 only"):
        create_backend("compile", models["noprior"], precision="fp16")
    with pytest.raises(BackendError, match="mode must be one of"):
        create_backend("compile", models["noprior"], mode="turbo")
    if not torch.cuda.is_available():
        for name in ("onnx", "compile"):
            with pytest.raises(BackendError, match="CUDA is not available"):
                create_backend(name, models["noprior"], device="cuda")


def test_backend_cli_options(models):
    parser = argparse.ArgumentParser()
    add_backend_arguments(parser)
    args = parser.parse_args([])
    assert (args.backend, args.precision, args.backend_batch) == ("eager", "fp32", 1)
    assert backend_from_args(args, models["noprior"]) is None
    args = parser.parse_args(["--backend", "tensorrt", "--precision", "fp16"])
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="CUDA is not available"):
            backend_from_args(args, models["noprior"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--backend", "tflite"])


def test_doctests():
    import streamloc.backends as backends
    import streamloc.backends.cache as cache_module

    for module in (backends, cache_module):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


# -- GPU --------------------------------------------------------------------------------------
@pytest.fixture()
def cuda_fp32():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["noprior", "ezvsl"])
def test_compile_cuda_matches_eager(method, cuda_fp32):
    model = _small(method).to(cuda_fp32)
    backend = create_backend("compile", model, device="cuda", batch=1, mode="reduce-overhead")
    eager = EagerBackend(model, device="cuda")
    for seed in (0, 1):
        x = [t.to(cuda_fp32) for t in _inputs(model, 1, seed)]
        first = backend(*x)
        second = backend(*x)  # CUDA-graph replay must not overwrite what the first call returned
        assert max(_max_diffs(first, eager(*x))) <= 1e-3
        assert max(_max_diffs(second, first)) == 0.0
    backend.close()


@pytest.mark.gpu
@pytest.mark.slow
def test_compile_cuda_default_max_autotune(cuda_fp32):
    model = _small("noprior").to(cuda_fp32)
    backend = create_backend("compile", model, device="cuda")
    assert backend.mode == "max-autotune" and backend.cudagraphs
    x = [t.to(cuda_fp32) for t in _inputs(model, 1, 0)]
    assert max(_max_diffs(backend(*x), EagerBackend(model, device="cuda")(*x))) <= 1e-3


@pytest.mark.gpu
def test_onnx_cuda_matches_eager(cuda_fp32, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    model = _small("noprior").to(cuda_fp32)
    backend = create_backend("onnx", model, device="cuda", batch=1, cache_dir=tmp_path)
    assert backend.providers[0] == "CUDAExecutionProvider"
    x = [t.to(cuda_fp32) for t in _inputs(model, 1, 0)]
    outputs = backend(*x)
    assert all(o.device.type == "cuda" for o in outputs)
    assert max(_max_diffs(outputs, EagerBackend(model, device="cuda")(*x))) <= 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("precision,atol", [("fp32", 1e-3), ("fp16", 5e-2)])
def test_tensorrt_matches_eager(precision, atol, cuda_fp32, tmp_path):
    pytest.importorskip("torch_tensorrt", reason="torch-tensorrt is not installed")
    model = _small("noprior").to(cuda_fp32)
    backend = create_backend("tensorrt", model, device="cuda", batch=1, precision=precision, cache_dir=tmp_path)
    assert backend.built and backend.path.is_file() and backend.artifact.valid()
    eager = EagerBackend(model, device="cuda")
    for seed in (0, 1):
        x = [t.to(cuda_fp32) for t in _inputs(model, 1, seed)]
        outputs = backend(*x)
        assert all(o.dtype == torch.float32 and o.device.type == "cuda" for o in outputs)
        assert max(_max_diffs(outputs, eager(*x))) <= atol
    backend.close()
    assert backend.module is None
    again = create_backend("tensorrt", model, device="cuda", batch=1, precision=precision, cache_dir=tmp_path)
    assert not again.built  # loaded from the cache
    x = [t.to(cuda_fp32) for t in _inputs(model, 1, 0)]
    assert max(_max_diffs(again(*x), eager(*x))) <= atol
    again.close()


@pytest.mark.gpu
def test_tensorrt_corrupt_cache_is_rebuilt(cuda_fp32, tmp_path):
    pytest.importorskip("torch_tensorrt", reason="torch-tensorrt is not installed")
    model = _small("noprior").to(cuda_fp32)
    first = create_backend("tensorrt", model, device="cuda", cache_dir=tmp_path)
    first.close()
    with open(first.path, "r+b") as f:
        f.seek(os.path.getsize(first.path) // 2)
        f.write(b"\0" * 256)
    again = create_backend("tensorrt", model, device="cuda", cache_dir=tmp_path)
    assert again.built and again.artifact.valid()
    again.close()
