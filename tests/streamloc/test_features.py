"""Tests of streamloc.features: spectrogram front-ends, resampling, image pre-processing."""

from __future__ import annotations

import dataclasses
import doctest
import json
import math

import numpy as np
import pytest
import torch

import streamloc.features as features
from streamloc.errors import InputError
from streamloc.features import (
    AudioFrontend,
    AudioFrontendConfig,
    ImagePreprocessConfig,
    StreamResampler,
    hann_window,
    mel_filterbank,
    preprocess_images,
    preprocess_images_torch,
    resample,
    tukey_window,
    validate_audio,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# One grey level after normalisation with the smallest ImageNet std (0.224).
ONE_LEVEL = 1.0 / (255.0 * 0.224) + 1e-5


def _test_signal(sample_rate: int, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Chirp + white noise + DC offset (so that per-frame mean removal matters), float32."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    f0, f1 = 50.0, 0.45 * sample_rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    rng = np.random.default_rng(seed)
    x = 0.5 * np.cos(phase) + 0.05 * rng.standard_normal(n) + 0.3
    return x.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Windows and filterbank
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length, alpha, periodic",
    [(512, 0.25, True), (512, 0.25, False), (511, 0.5, True), (64, 0.0, True), (64, 1.0, True),
     (100, 0.3, False), (1, 0.25, True)],
)
def test_tukey_window_matches_scipy(length, alpha, periodic):
    signal = pytest.importorskip("scipy.signal")
    ref = signal.windows.tukey(length, alpha, sym=not periodic)
    np.testing.assert_allclose(tukey_window(length, alpha, periodic), ref, atol=1e-12)


def test_tukey_window_energy_of_official_setting():
    assert float((tukey_window(512, 0.25) ** 2).sum()) == pytest.approx(432.0, abs=1e-9)


def test_hann_window_matches_torch():
    np.testing.assert_allclose(
        hann_window(160), torch.hann_window(160, periodic=True, dtype=torch.float64).numpy(),
        atol=1e-12,
    )


def _htk_filterbank_slow(n_freqs, sample_rate, n_mels, f_min, f_max):
    """Independent transcription of the HTK triangular filterbank, one weight at a time."""
    to_mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    to_hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    lo, hi = to_mel(f_min), to_mel(f_max)
    edges = [to_hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = np.zeros((n_freqs, n_mels))
    for k in range(n_freqs):
        f = (sample_rate / 2.0) * k / (n_freqs - 1)
        for m in range(n_mels):
            left, centre, right = edges[m], edges[m + 1], edges[m + 2]
            if left <= f <= centre:
                fb[k, m] = (f - left) / (centre - left)
            elif centre < f <= right:
                fb[k, m] = (right - f) / (right - centre)
    return fb


@pytest.mark.parametrize(
    "n_freqs, sample_rate, n_mels, f_min, f_max",
    [(81, 16000, 64, 0.0, 8000.0), (257, 22050, 40, 0.0, 11025.0), (513, 16000, 128, 20.0, 7600.0)],
)
def test_mel_filterbank_matches_htk_formula(n_freqs, sample_rate, n_mels, f_min, f_max):
    fb = mel_filterbank(n_freqs, sample_rate, n_mels, f_min, f_max)
    assert fb.shape == (n_freqs, n_mels)
    np.testing.assert_allclose(fb, _htk_filterbank_slow(n_freqs, sample_rate, n_mels, f_min, f_max),
                               atol=1e-12)


def test_mel_filterbank_matches_librosa_when_installed():
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=16000, n_fft=160, n_mels=64, fmin=0.0, fmax=8000.0, htk=True,
                              norm=None)
    np.testing.assert_allclose(mel_filterbank(81, 16000, 64, 0.0, 8000.0), ref.T, atol=1e-6)


# --------------------------------------------------------------------------------------------
# PSD front-end (EZ-VSL / NoPrior)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample_rate, frames", [(16000, 200), (22050, 276), (48000, 603)])
def test_psd_matches_scipy_spectrogram(sample_rate, frames):
    signal = pytest.importorskip("scipy.signal")
    x = _test_signal(sample_rate)
    _, _, psd = signal.spectrogram(x.astype(np.float64), sample_rate, nperseg=512, noverlap=274)
    ref_log = np.log(psd + 1e-7)
    frontend = AudioFrontend(AudioFrontendConfig(sample_rate=sample_rate))
    out = frontend(torch.from_numpy(x))
    assert out.shape == (1, 1, 257, frames) and out.dtype == torch.float32
    assert frontend.output_shape == (1, 257, frames)
    got = out[0, 0].double().numpy()
    assert np.abs(got * 12.0 - ref_log).max() <= 1e-4  # log(psd + 1e-7), before the / 12
    assert np.abs(got - ref_log / 12.0).max() <= 1e-4  # the model input, after the / 12


def test_psd_detrend_matters_for_the_test_signal():
    # Guard that the DC offset of the test signal exercises the per-frame mean removal.
    x = torch.from_numpy(_test_signal(16000))
    with_detrend = AudioFrontend()(x)
    without = AudioFrontend()(x - x.mean())
    assert (with_detrend - without).abs().max() < 1e-3
    raw = torch.log(torch.fft.rfft(x[:512] * AudioFrontend().window).abs().square() + 1e-7)
    assert (raw[0] / 12 - with_detrend[0, 0, 0, 0]).abs() > 0.5


def test_psd_batch_equals_per_item():
    frontend = AudioFrontend()
    batch = torch.stack([torch.from_numpy(_test_signal(16000, seed=s)) for s in range(3)])
    out = frontend(batch)
    assert out.shape == (3, 1, 257, 200)
    for i in range(3):
        torch.testing.assert_close(out[i : i + 1], frontend(batch[i]), atol=1e-6, rtol=0)


def test_float64_input_is_cast_to_float32():
    x = torch.from_numpy(_test_signal(16000))
    out = AudioFrontend()(x.double())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, AudioFrontend()(x))


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("kind, seconds", [("psd", 3.0), ("logmel", 0.96)])
def test_frontend_cuda_matches_cpu(kind, seconds):
    cfg = AudioFrontendConfig(kind=kind, window_seconds=seconds)
    x = torch.from_numpy(_test_signal(16000, seconds)).expand(2, -1)
    cpu = AudioFrontend(cfg)(x)
    gpu = AudioFrontend(cfg).to("cuda")(x.cuda())
    assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# Log-mel front-end (Mix-and-Localize)
# --------------------------------------------------------------------------------------------


def _logmel_slow(x: np.ndarray, sample_rate=16000, n_fft=160, hop=80, n_mels=64, f_max=8000.0):
    """Frame-by-frame DFT reference in float64: centred reflect-padded frames, power, mel, dB."""
    pad = n_fft // 2
    xp = np.pad(x.astype(np.float64), pad, mode="reflect")
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    fb = _htk_filterbank_slow(n_fft // 2 + 1, sample_rate, n_mels, 0.0, f_max)
    rows = []
    for start in range(0, len(xp) - n_fft + 1, hop):
        seg = xp[start : start + n_fft] * window
        power = np.empty(n_fft // 2 + 1)
        for k in range(n_fft // 2 + 1):
            z = np.sum(seg * np.exp(-2j * np.pi * k * n / n_fft))
            power[k] = z.real**2 + z.imag**2
        mel = power @ fb
        rows.append(20.0 * np.log10(np.maximum(1e-5, mel)) / 100.0)
    return np.array(rows)  # (T, n_mels)


def test_logmel_matches_slow_numpy_reference():
    cfg = AudioFrontendConfig(kind="logmel", window_seconds=0.1)  # 1600 samples
    x = _test_signal(16000, 0.1, seed=3)
    out = AudioFrontend(cfg)(torch.from_numpy(x))
    ref = _logmel_slow(x)
    assert out.shape == (1, 1, 21, 64) and ref.shape == (21, 64)
    assert np.abs(out[0, 0].double().numpy() - ref).max() <= 1e-4


def test_logmel_official_shape():
    cfg = AudioFrontendConfig(kind="logmel", window_seconds=0.96)
    frontend = AudioFrontend(cfg)
    x = torch.from_numpy(np.stack([_test_signal(16000, 0.96, seed=s) for s in range(2)]))
    out = frontend(x)
    assert cfg.num_samples == 15360
    assert out.shape == (2, 1, 193, 64) and out.dtype == torch.float32
    assert frontend.output_shape == (1, 193, 64)
    assert float(out.min()) >= -1.0  # floor: 20 * log10(1e-5) / 100


def test_buffers_are_not_saved_in_state_dict():
    assert AudioFrontend().state_dict() == {}
    names = {n for n, _ in AudioFrontend(AudioFrontendConfig(kind="logmel")).named_buffers()}
    assert names == {"window", "mel_fb"}


# --------------------------------------------------------------------------------------------
# Front-end errors and configuration
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_positions, value, expected",
    [
        ([(0, 10), (0, 20), (1, 5)], float("nan"),
         "3 NaN and 0 inf sample(s) (first at batch 0, sample 10)"),
        ([(1, 7)], float("inf"), "0 NaN and 1 inf sample(s) (first at batch 1, sample 7)"),
        ([(1, 47999)], float("-inf"), "first at batch 1, sample 47999"),
    ],
)
def test_frontend_rejects_non_finite(bad_positions, value, expected):
    x = torch.zeros(2, 48000)
    for b, i in bad_positions:
        x[b, i] = value
    with pytest.raises(InputError) as err:
        AudioFrontend()(x)
    assert expected in str(err.value)


def test_non_finite_check_can_be_disabled():
    x = torch.zeros(48000)
    x[3] = float("nan")
    assert torch.isnan(AudioFrontend(check_inputs=False)(x)).any()


@pytest.mark.parametrize(
    "waveform, match",
    [
        (torch.zeros(47999), "needs exactly 48000 samples per window, got 47999"),
        (torch.zeros(2, 48001), "needs exactly 48000 samples"),
        (torch.zeros(1, 1, 48000), r"shape \(N,\) or \(B, N\)"),
        (torch.zeros(48000, dtype=torch.int16), "float samples"),
        (np.zeros(48000, np.float32), "expects a torch.Tensor"),
        (torch.zeros(0, 48000), "empty batch"),
    ],
)
def test_frontend_input_errors(waveform, match):
    with pytest.raises(InputError, match=match):
        AudioFrontend()(waveform)


def test_config_json_round_trip_and_unknown_keys():
    cfg = AudioFrontendConfig(kind="logmel", sample_rate=16000, window_seconds=0.96)
    text = json.dumps(dataclasses.asdict(cfg))
    assert AudioFrontendConfig.from_dict(json.loads(text)) == cfg
    with pytest.raises(InputError, match=r"unknown key\(s\) \['samplerate'\]"):
        AudioFrontendConfig.from_dict({"samplerate": 22050})
    img = ImagePreprocessConfig(size=(448, 224))
    assert ImagePreprocessConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(img)))) == img
    with pytest.raises(InputError, match="unknown key"):
        ImagePreprocessConfig.from_dict({"sizes": [1, 2]})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "mfcc"}, "kind"),
        ({"sample_rate": 0}, "sample_rate"),
        ({"noverlap": 512}, "noverlap"),
        ({"window_seconds": 0.01}, "fewer than nperseg"),
        ({"tukey_alpha": 1.5}, "tukey_alpha"),
        ({"scale": float("nan")}, "scale"),
        ({"mel_db": "librosa"}, "mel_db"),
        ({"kind": "logmel", "f_max": 9000.0}, "Nyquist"),
        ({"n_mels": 0}, "n_mels"),
    ],
)
def test_audio_config_validation(kwargs, match):
    with pytest.raises(InputError, match=match):
        AudioFrontendConfig(**kwargs)


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


def _band_limited(sample_rate: int, seconds: float, f_top: float, channels: int = 0):
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    freqs = np.linspace(100.0, f_top, 7)
    x = sum(np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs)) / len(freqs)
    if channels:
        x = np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)
    return x.astype(np.float32)


@pytest.mark.parametrize(
    "from_rate, to_rate", [(48000, 16000), (44100, 16000), (16000, 22050), (22050, 16000)]
)
def test_resample_length_and_round_trip(from_rate, to_rate):
    x = _band_limited(from_rate, 1.0, 0.4 * min(from_rate, to_rate))
    y = resample(x, from_rate, to_rate)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - len(x) * to_rate / from_rate) <= 1
    back = resample(y, to_rate, from_rate)
    assert abs(len(back) - len(x)) <= 1
    m = min(len(back), len(x))
    edge = from_rate // 50  # ignore 20 ms at both ends (filter edge effects)
    assert np.abs(back[edge : m - edge] - x[edge : m - edge]).max() < 1e-3


def test_resample_multichannel_float64_and_same_rate():
    x = _band_limited(48000, 0.5, 6000.0, channels=2).astype(np.float64)
    y = resample(x, 48000, 16000)
    assert y.shape == (8000, 2) and y.dtype == np.float32
    same = resample(x, 16000, 16000)
    assert same.dtype == np.float32 and same.shape == x.shape
    assert not np.shares_memory(same, x)


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros(10, np.float32), 0, 16000), "from_rate"),
        ((np.zeros(10, np.float32), 16000, -1), "to_rate"),
        ((np.zeros(10, np.int16), 16000, 8000), "float samples"),
        ((np.zeros((2, 2, 2), np.float32), 16000, 8000), "shape"),
        ((np.array([0.0, np.nan], np.float32), 16000, 8000), "1 NaN"),
        ((np.zeros(10, np.float32), 16000, 8000, "best"), "quality"),
    ],
)
def test_resample_errors(args, match):
    with pytest.raises(InputError, match=match):
        resample(*args)


@pytest.mark.parametrize(
    "from_rate, to_rate, channels", [(48000, 16000, 1), (44100, 16000, 2), (16000, 22050, 1)]
)
def test_stream_resampler_equals_one_shot(from_rate, to_rate, channels):
    x = _band_limited(from_rate, 1.0, 5000.0, channels=channels if channels > 1 else 0)
    x = x + np.random.default_rng(1).standard_normal(x.shape).astype(np.float32) * 0.01
    expected = resample(x, from_rate, to_rate)
    rs = StreamResampler(from_rate, to_rate, channels=channels)
    rng = np.random.default_rng(2)
    for _ in range(2):  # flush() resets, so a second stream gives the same again
        parts, i = [], 0
        while i < len(x):
            n = int(rng.integers(1, 2000))
            parts.append(rs.process(x[i : i + n]))
            i += n
        parts.append(rs.flush())
        got = np.concatenate(parts)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4


def test_stream_resampler_delay_and_errors():
    rs = StreamResampler(48000, 16000)
    out = rs.process(np.zeros(4800, np.float32))
    assert len(out) + rs.delay == pytest.approx(1600)
    rs.reset()
    assert rs.delay == 0.0
    with pytest.raises(InputError, match="1 channel"):
        rs.process(np.zeros((100, 2), np.float32))
    with pytest.raises(InputError, match="channels"):
        StreamResampler(48000, 16000, channels=0)
    with pytest.raises(InputError, match="from_rate"):
        StreamResampler(0, 16000)


# --------------------------------------------------------------------------------------------
# validate_audio
# --------------------------------------------------------------------------------------------


def test_validate_audio_mono_and_multichannel():
    mono = np.linspace(-1, 1, 10)
    out = validate_audio(mono, 16000)
    assert out.dtype == np.float32 and out.shape == (10,)
    np.testing.assert_allclose(out, mono, atol=1e-7)
    f32 = mono.astype(np.float32)
    assert not np.shares_memory(validate_audio(f32, 16000), f32)
    stereo = np.stack([np.ones(5), -np.ones(5) * 0.5], axis=1).astype(np.float32)
    np.testing.assert_allclose(validate_audio(stereo, 48000), np.full(5, 0.25, np.float32))


@pytest.mark.parametrize(
    "audio, rate, match",
    [
        (np.zeros(10, np.int16), 16000, "/ 32768"),
        (np.zeros((2, 2, 2), np.float32), 16000, "1-D"),
        (np.zeros((2, 48000), np.float32), 16000, "channels-first"),
        (np.zeros(0, np.float32), 16000, "empty"),
        (np.array([0.0, np.inf, np.nan]), 16000,
         r"1 NaN and 1 inf sample\(s\) \(first at sample 1\)"),
        (np.zeros(10, np.float32), 0, "sample_rate"),
        (torch.zeros(10), 16000, "numpy"),
        ([0.0, 0.1], 16000, "numpy array"),
    ],
)
def test_validate_audio_errors(audio, rate, match):
    with pytest.raises(InputError, match=match):
        validate_audio(audio, rate)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus texture, uint8 BGR."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width * 200, yy / height * 200, (xx + yy) / (width + height) * 255], -1)
    noise = rng.normal(0, 20, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("bgr", [(0, 0, 0), (255, 255, 255), (10, 128, 250)])
def test_constant_frame_gives_exact_normalised_value(bgr):
    cfg = ImagePreprocessConfig()
    frame = np.empty((480, 640, 3), np.uint8)
    frame[...] = bgr
    out = preprocess_images(frame, cfg)
    assert out.shape == (1, 3, 224, 224) and out.dtype == torch.float32 and out.is_contiguous()
    rgb = bgr[::-1]
    for c in range(3):
        expected = (np.float32(rgb[c]) / np.float32(255.0) - np.float32(cfg.mean[c])) / np.float32(
            cfg.std[c]
        )
        assert torch.all(out[0, c] == torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(preprocess_images_torch(torch.from_numpy(frame), cfg), out)


def test_preprocess_images_batch_forms():
    cfg = ImagePreprocessConfig(size=(112, 96))
    frames = [_photo(480, 640, 0), _photo(100, 50, 1), _photo(112, 96, 2)]
    out = preprocess_images(frames, cfg, device="cpu")
    assert out.shape == (3, 3, 112, 96) and out.dtype == torch.float32
    for i, frame in enumerate(frames):
        torch.testing.assert_close(out[i : i + 1], preprocess_images(frame, cfg))
    same_size = np.stack([_photo(240, 320, s) for s in range(2)])
    assert preprocess_images(same_size, cfg).shape == (2, 3, 112, 96)
    # No resize when the frame already has the model size: channels are just swapped.
    frame = frames[2]
    rgb = frame[..., ::-1].astype(np.float32)
    expected = (rgb / 255 - np.float32(cfg.mean)) / np.float32(cfg.std)
    np.testing.assert_allclose(out[2].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_area_shrink_averages_pixels():
    plain = ImagePreprocessConfig(size=(2, 2), mean=(0, 0, 0), std=(1, 1, 1))
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[:2, :2] = 200  # top-left block
    out = preprocess_images(frame, plain)
    np.testing.assert_allclose(out[0, 0].numpy() * 255, [[200, 0], [0, 0]], atol=1e-4)
    frame[:, :] = 0
    frame[0, 0] = 200  # one pixel of four: the mean, 50
    out = preprocess_images(frame, plain)
    assert out[0, 0, 0, 0].item() * 255 == pytest.approx(50.0, abs=1e-4)


@pytest.mark.parametrize("interpolation, max_fraction", [("area_or_cubic", 0.01), ("cubic", 0.01),
                                                         ("linear", 0.2)])
@pytest.mark.parametrize(
    "in_hw, out_hw",
    [((480, 640), (224, 224)), ((720, 1280), (224, 224)), ((100, 120), (224, 224)),
     ((100, 451), (224, 224)), ((448, 448), (224, 224)), ((300, 200), (448, 224))],
)
def test_torch_path_matches_cv2_path(interpolation, max_fraction, in_hw, out_hw):
    # Measured: at most one grey level anywhere (0.0175 after normalisation); off-by-one pixels
    # are < 0.2 % for area/cubic (fixed-point cubic coefficients in OpenCV) and ~12 % for linear.
    cfg = ImagePreprocessConfig(size=out_hw, interpolation=interpolation)
    frame = _photo(*in_hw)
    a = preprocess_images(frame, cfg)
    b = preprocess_images_torch(torch.from_numpy(frame).unsqueeze(0), cfg)
    assert b.shape == a.shape == (1, 3, *out_hw) and b.dtype == torch.float32
    diff = (a - b).abs()
    assert float(diff.max()) <= ONE_LEVEL
    assert float((diff > 1e-4).float().mean()) <= max_fraction


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10), np.uint8), "cv2.COLOR_GRAY2BGR"),
        (np.zeros((10, 10, 1), np.uint8), "grayscale"),
        (np.zeros((10, 10, 4), np.uint8), "COLOR_BGRA2BGR"),
        (np.zeros((10, 10, 5), np.uint8), "5 channels"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((2, 3, 10, 10, 3), np.uint8), "expected \\(height, width, 3\\)"),
        ([], "no frames"),
        ([np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8)], "frame 1 .* grayscale"),
        (torch.zeros(10, 10, 3, dtype=torch.uint8), "preprocess_images_torch"),
        ("frame.jpg", "expects a BGR uint8 frame"),
    ],
)
def test_preprocess_images_errors(frames, match):
    with pytest.raises(InputError, match=match):
        preprocess_images(frames)


@pytest.mark.parametrize(
    "frames, match",
    [
        (torch.zeros(1, 10, 10, 3), "uint8"),
        (torch.zeros(10, 10, dtype=torch.uint8), "grayscale"),
        (torch.zeros(1, 3, 10, 10, dtype=torch.uint8), "channels"),
        (torch.zeros(0, 10, 10, 3, dtype=torch.uint8), "empty batch"),
        (np.zeros((10, 10, 3), np.uint8), "use preprocess_images"),
    ],
)
def test_preprocess_images_torch_errors(frames, match):
    with pytest.raises(InputError, match=match):
        preprocess_images_torch(frames)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"size": (224,)}, "size"), ({"size": (0, 224)}, "size"), ({"std": (1, 0, 1)}, "std"),
     ({"mean": (0.5, 0.5)}, "mean"), ({"interpolation": "lanczos"}, "interpolation")],
)
def test_image_config_validation(kwargs, match):
    with pytest.raises(InputError, match=match):
        ImagePreprocessConfig(**kwargs)


@pytest.mark.gpu
@cuda
def test_preprocess_images_torch_on_cuda():
    frame = _photo(480, 640)
    cpu = preprocess_images(frame)
    gpu = preprocess_images_torch(torch.from_numpy(frame).cuda())
    assert gpu.device.type == "cuda"
    assert float((gpu.cpu() - cpu).abs().max()) <= ONE_LEVEL
    assert preprocess_images(frame, device="cuda").device.type == "cuda"


def test_docstring_examples():
    result = doctest.testmod(features, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 20 and result.failed == 0
