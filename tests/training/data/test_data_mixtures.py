"""The four mixture protocols against their literal formulas."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import (
    grid_2x2,
    mix_logspec_average,
    mix_rms_average,
    mix_waveform_sum,
    rms_normalize,
    stack_frames_vertical,
)

RNG = np.random.default_rng(0)


def _waves(k=3, n=48000, scale=0.9):
    return [(scale * RNG.uniform(-1, 1, n)).astype(np.float32) for _ in range(k)]


def test_waveform_sum_is_plain_sum_without_rescale_or_clip():
    a, b = _waves(2)
    a[:10] = 1.0
    b[:10] = 0.75
    out = mix_waveform_sum([a, b])
    np.testing.assert_array_equal(out, a + b)
    assert out.dtype == np.float32 and out[0] == 1.75  # left outside [-1, 1]
    w = _waves(3)
    np.testing.assert_array_equal(mix_waveform_sum(w), w[0] + w[1] + w[2])
    with pytest.raises(ValueError, match="equal lengths"):
        mix_waveform_sum([a, b[:-1]])
    with pytest.raises(ValueError, match="float"):
        mix_waveform_sum([np.arange(4), np.arange(4)])


def test_rms_average_literal_formula():
    a, b = _waves(2, scale=0.3)
    b = b * 0.01

    def literal(x):
        return x * (0.1 / max(1e-4, np.sqrt(np.mean(x.astype(np.float64) ** 2))))

    out = mix_rms_average([a, b])
    np.testing.assert_allclose(out, (literal(a) + literal(b)) / 2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.sqrt(np.mean(rms_normalize(a).astype(np.float64) ** 2)), 0.1, rtol=1e-6)
    # RMS below eps is floored: gain = rms / eps, silence stays silence
    tiny = np.full(100, 1e-6, np.float32)
    np.testing.assert_allclose(rms_normalize(tiny), tiny * (0.1 / 1e-4), rtol=1e-6)
    assert not mix_rms_average([np.zeros(8, np.float32)] * 2).any()
    np.testing.assert_allclose(
        mix_rms_average([a, b], rms=0.5, eps=1e-2),
        (a * 0.5 / max(1e-2, np.sqrt(np.mean(a.astype(np.float64) ** 2)))
         + b * 0.5 / max(1e-2, np.sqrt(np.mean(b.astype(np.float64) ** 2)))) / 2,
        rtol=1e-6, atol=1e-7,
    )


def test_logspec_average_is_elementwise_mean():
    specs = [RNG.normal(size=(1, 257, 276)).astype(np.float32) for _ in range(3)]
    out = mix_logspec_average(specs)
    np.testing.assert_allclose(out, (specs[0] + specs[1] + specs[2]) / 3, rtol=1e-6, atol=1e-6)
    assert out.shape == (1, 257, 276) and out.dtype == np.float32
    with pytest.raises(ValueError, match="one shape"):
        mix_logspec_average([specs[0], specs[1][:, :, :200]])


def test_stack_frames_vertical():
    f = [RNG.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(3)]
    out = stack_frames_vertical(f[:2])
    assert out.shape == (448, 224, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:224], f[0])
    np.testing.assert_array_equal(out[224:], f[1])
    assert stack_frames_vertical(f).shape == (672, 224, 3)
    chw = [x.transpose(2, 0, 1) for x in f[:2]]
    out = stack_frames_vertical(chw, channels_first=True)
    assert out.shape == (3, 448, 224)
    np.testing.assert_array_equal(out[:, 224:], chw[1])
    with pytest.raises(ValueError, match="width"):
        stack_frames_vertical([f[0], f[1][:, :100]])


def test_grid_2x2_image_masks_and_audio():
    frames = [np.full((4, 6, 3), 10 * (i + 1), np.uint8) for i in range(4)]
    waves = _waves(4, n=1000, scale=0.5)
    g = grid_2x2(frames, [True, False, False, True], waves)
    assert g.image.shape == (8, 12, 3)
    np.testing.assert_array_equal(g.image[:4, :6], frames[0])
    np.testing.assert_array_equal(g.image[:4, 6:], frames[1])
    np.testing.assert_array_equal(g.image[4:, :6], frames[2])
    np.testing.assert_array_equal(g.image[4:, 6:], frames[3])
    assert g.tile_masks.shape == (4, 8, 12) and g.tile_masks.dtype == bool
    expected = np.zeros((4, 8, 12), bool)
    expected[0, :4, :6] = expected[1, :4, 6:] = expected[2, 4:, :6] = expected[3, 4:, 6:] = True
    np.testing.assert_array_equal(g.tile_masks, expected)
    np.testing.assert_array_equal(g.sounding, [True, False, False, True])
    np.testing.assert_array_equal(g.sounding_mask, expected[0] | expected[3])
    np.testing.assert_array_equal(g.audio, waves[0] + waves[3])  # silent tiles contribute nothing
    assert g.tile_boxes[3] == (0.5, 0.5, 1.0, 1.0)
    # jitter: explicit delays of the sounding waves
    g = grid_2x2(frames, [False, True, True, False], waves, offsets=[0, 3])
    exp = waves[1].copy()
    exp[3:] += waves[2][:-3]
    np.testing.assert_array_equal(g.audio, exp)
    assert grid_2x2(frames, [True, True, False, False]).audio is None


def test_grid_2x2_checks():
    frames = [np.zeros((4, 4, 3), np.uint8)] * 4
    with pytest.raises(ValueError, match="2 sounding tiles, got 3"):
        grid_2x2(frames, [True, True, True, False])
    assert grid_2x2(frames, [True, True, True, False], n_sounding=None).sounding.sum() == 3
    with pytest.raises(ValueError, match="exactly 4 frames"):
        grid_2x2(frames[:3], [True, True, False])
    with pytest.raises(ValueError, match="one shape"):
        grid_2x2(frames[:3] + [np.zeros((5, 4, 3), np.uint8)], [True, True, False, False])
    with pytest.raises(ValueError, match="one offset per sounding tile"):
        grid_2x2(frames, [True, True, False, False], _waves(4, 10), offsets=[1])
