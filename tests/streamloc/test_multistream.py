"""Multi-stream batching and on-device preprocessing.

* N sources (frames of different sizes, audio at different rates) go through the backend as ONE
  call of N items, and result i equals what `localize` gives for source i alone. Tolerance on
  the sound map: 1e-5 for eager on the CPU (same kernels, another batch size), 1e-4 for ONNX
  Runtime (as tests/streamloc/backends), 1e-3 on CUDA with TF32 off.
* On CUDA (marker ``gpu``): the spectrogram and the images are computed on the GPU, match the CPU
  path (images within one grey level, spectrograms within 1e-4), and a tick synchronises with the
  host exactly once.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamloc import Localizer
from streamloc.backends import EagerBackend, create_backend
from streamloc.errors import InputError
from streamloc.features import preprocess_images
from streamloc.models import create_model

SIZES = [(240, 320), (120, 160), (480, 640), (90, 90)]
RATES = [22050, 48000, 16000, 44100]
ATOL = {("eager", "cpu"): 1e-5, ("onnx", "cpu"): 1e-4, ("eager", "cuda"): 1e-3}
pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture()
def cuda_fp32():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _model():
    torch.manual_seed(0)
    # tau1 = 1 keeps every identified object, so the masks and boxes are compared too
    return create_model("noprior", image={"size": (64, 64)}, audio={"window_seconds": 1.0}, tau1=1.0).eval()


def _streams(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames, audios, rates = [], [], []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        rate = RATES[i % len(RATES)]
        t = np.arange(int(1.5 * rate)) / rate
        audio = 0.2 * np.sin(2 * np.pi * (300 + 150 * i) * t) + 0.05 * rng.standard_normal(t.size)
        frames.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        audios.append(audio.astype(np.float32))
        rates.append(rate)
    return frames, audios, rates


class CallLog:
    """A backend wrapper recording the batch size of every call."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def __call__(self, images, spectrograms):
        self.calls.append(int(images.shape[0]))
        return self.backend(images, spectrograms)

    def close(self):
        self.backend.close()


@pytest.mark.parametrize("backend,n,device", [
    ("eager", 1, "cpu"),
    ("eager", 2, "cpu"),
    ("eager", 4, "cpu"),
    ("onnx", 3, "cpu"),  # a graph built for batch 3: one call
    pytest.param("eager", 4, "cuda", marks=pytest.mark.gpu),
])
def test_batched_streams_equal_single_streams(backend, n, device, tmp_path, request):
    if device == "cuda":
        request.getfixturevalue("cuda_fp32")
    model = _model().to(device)
    inner = (EagerBackend(model, device=device) if backend == "eager"
             else create_backend("onnx", model, batch=n, threads=1, cache_dir=tmp_path))
    spy = CallLog(inner)
    batched = Localizer(model, device=device, backend=spy)
    single = Localizer(model, device=device)
    frames, audios, rates = _streams(n)

    results = batched.localize_batch(frames, audios, rates, time_ns=list(range(n)), frame_index=list(range(n)))
    assert spy.calls == [n]  # the N sources went through the encoder as one call
    seen = 0
    for i, got in enumerate(results):
        ref = single.localize(frames[i], audios[i], rates[i])
        assert got.frame_size == ref.frame_size == frames[i].shape[:2]
        assert (got.time_ns, got.frame_index) == (i, i)
        np.testing.assert_allclose(got.sound_map, ref.sound_map, atol=ATOL[backend, device], rtol=0)
        assert len(got.objects) == len(ref.objects)
        seen += len(ref.objects)
        for a, b in zip(ref.objects, got.objects):
            assert a.box == b.box
            np.testing.assert_array_equal(a.mask, b.mask)
    assert seen > 0
    spy.close()


def test_one_rate_for_all_streams_and_rate_count_mismatch():
    loc = Localizer(_model())
    frames, audios, _ = _streams(2)
    audios = [a[: int(1.5 * 22050)] for a in audios]
    assert len(loc.localize_batch(frames, audios, 22050)) == 2
    with pytest.raises(InputError, match="3 sample rates for 2 audio windows"):
        loc.localize_batch(frames, audios, [22050] * 3)


def test_preprocess_on_device_needs_cuda():
    assert Localizer(_model()).preprocess_on_device is False
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Localizer(_model(), preprocess_on_device=True)


# -- CUDA: preprocessing on the GPU, one host sync per tick -------------------------------------
@pytest.mark.gpu
def test_gpu_preprocessing_matches_cpu(cuda_fp32):
    model = _model()
    cpu = Localizer(model)
    frames, audios, rates = _streams(3)
    windows = [cpu._window(a, r)[0] for a, r in zip(audios, rates)]
    gpu = Localizer(_model(), device="cuda")
    assert gpu.preprocess_on_device and not gpu.frontend.check_inputs
    images, specs = gpu._device_inputs(frames, windows)
    assert images.device.type == specs.device.type == "cuda"
    ref_images = preprocess_images(frames, model.config.image)
    one_level = 1.0 / (255 * min(model.config.image.std))
    assert float((images.cpu() - ref_images).abs().max()) <= one_level + 1e-5
    with torch.inference_mode():
        ref_specs = cpu.frontend(torch.from_numpy(np.stack(windows)))
    assert float((specs.cpu() - ref_specs).abs().max()) <= 1e-4

    result = gpu.localize(frames[0], audios[0], rates[0])
    assert {"preprocess_gpu", "encoder_gpu"} <= set(result.timings_ms)
    assert all(result.timings_ms[k] >= 0 for k in ("preprocess_gpu", "encoder_gpu"))


@pytest.mark.gpu
def test_gpu_tick_synchronises_once(cuda_fp32, monkeypatch):
    loc = Localizer(_model(), device="cuda")
    frames, audios, rates = _streams(2)
    for _ in range(2):  # warm-up: cached constants, cuFFT plans, pinned host blocks
        loc.localize_batch(frames, audios, rates)

    syncs = []
    original = torch.cuda.Stream.synchronize

    def counted(self):
        # The one allowed sync runs with the debug mode off; every other sync raises.
        syncs.append(self)
        torch.cuda.set_sync_debug_mode(0)
        try:
            return original(self)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(torch.cuda.Stream, "synchronize", counted)
    torch.cuda.set_sync_debug_mode("error")
    try:
        results = loc.localize_batch(frames, audios, rates)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(syncs) == 1 and len(results) == 2
