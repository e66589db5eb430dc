import numpy as np
import pytest
import soxr
import torch

from streamloc import Localizer
from streamloc.errors import InputError
from streamloc.models import create_model

RATE = 22050


@pytest.fixture(scope="module")
def localizer():
    torch.manual_seed(0)
    # tau1 = 1 disables the background rejection, so even a random-init model reports objects
    return Localizer(create_model("noprior", tau1=1.0))


def _scene(seed=0, h=240, w=320):
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    audio = (0.2 * rng.standard_normal(4 * RATE)).astype(np.float32)
    return frame, audio


def test_result_structure(localizer):
    frame, audio = _scene()
    result = localizer.localize(frame, audio, RATE, time_ns=123, frame_index=7)
    assert result.frame_size == (240, 320)
    assert result.sound_map.shape == (7, 7)
    assert (result.time_ns, result.frame_index) == (123, 7)
    assert set(result.timings_ms) == {"preprocess", "encoder", "postprocess", "total"}
    assert result.objects
    for obj in result.objects:
        assert obj.heatmap.shape == (240, 320) and obj.heatmap.dtype == np.float32
        assert 0.0 <= obj.heatmap.min() and obj.heatmap.max() <= 1.0
        assert obj.mask.shape == (240, 320) and obj.mask.dtype == bool
        if obj.mask.any():
            x1, y1, x2, y2 = obj.box
            ys, xs = np.nonzero(obj.mask)
            assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            cx, cy = obj.centroid
            assert x1 <= cx < x2 and y1 <= cy < y2
        else:
            assert obj.box is None and obj.centroid is None
    record = result.to_record()
    assert record["num_objects"] == len(result.objects)


def test_masks_are_the_thresholded_heatmaps_by_default(localizer):
    frame, audio = _scene(1, 240, 320)
    result = localizer.localize(frame, audio, RATE)
    assert result.objects
    for obj in result.objects:
        np.testing.assert_array_equal(obj.mask, obj.heatmap >= localizer.mask_threshold)


def test_cells_masks_are_the_claimed_cells_at_frame_size(localizer):
    cells = Localizer(localizer.model, object_mask="cells")
    frame, audio = _scene(1, 224, 224)
    result = cells.localize(frame, audio, RATE)
    assert result.objects
    for obj in result.objects:
        # 224 / 7 = 32 px per cell: the centre pixel of every claimed cell is in the mask
        for i, j in zip(*np.nonzero(obj.cells)):
            assert obj.mask[32 * i + 16, 32 * j + 16]
        for i, j in zip(*np.nonzero(~obj.cells)):
            assert not obj.mask[32 * i + 16, 32 * j + 16]


def test_unknown_object_mask_is_rejected(localizer):
    with pytest.raises(ValueError, match="object_mask must be one of"):
        Localizer(localizer.model, object_mask="boxes")


def test_any_sample_rate_is_resampled(localizer):
    frame, audio = _scene(2)
    at_48k = soxr.resample(audio, RATE, 48000).astype(np.float32)
    a = localizer.localize(frame, audio, RATE)
    b = localizer.localize(frame, at_48k, 48000)
    np.testing.assert_allclose(a.sound_map, b.sound_map, atol=2e-3)


def test_silence_gives_no_objects(localizer):
    frame, _ = _scene()
    result = localizer.localize(frame, np.zeros(3 * RATE, np.float32), RATE)
    assert result.objects == [] and "silent" in result.flags


def test_batch_equals_single(localizer):
    scenes = [_scene(s) for s in (3, 4)]
    batch = localizer.localize_batch([f for f, _ in scenes], [a for _, a in scenes], RATE)
    for (frame, audio), r in zip(scenes, batch):
        single = localizer.localize(frame, audio, RATE)
        np.testing.assert_allclose(single.sound_map, r.sound_map, atol=1e-5)
        assert len(single.objects) == len(r.objects)


@pytest.mark.parametrize(
    "frame, audio, rate, match",
    [
        (np.zeros((10, 10, 3), np.float32), np.ones(3 * RATE, np.float32), RATE, "uint8"),
        (np.zeros((10, 10), np.uint8), np.ones(3 * RATE, np.float32), RATE, r"\(H, W, 3\).*cvtColor"),
        (np.zeros((0, 10, 3), np.uint8), np.ones(3 * RATE, np.float32), RATE, r"\(H, W, 3\)"),
        ("not an image", np.ones(3 * RATE, np.float32), RATE, "numpy array"),
        (np.zeros((10, 10, 3), np.uint8), np.ones(RATE, np.float32), RATE, "audio too short.*short_audio"),
        (np.zeros((10, 10, 3), np.uint8), np.full(3 * RATE, np.nan, np.float32), RATE, "NaN"),
        (np.zeros((10, 10, 3), np.uint8), np.ones(3 * RATE, np.float32), 0, "sample"),
        (np.zeros((10, 10, 3), np.uint8), np.ones(3 * RATE, np.float32), -8000, "sample"),
    ],
)
def test_bad_input_gets_a_clear_error(localizer, frame, audio, rate, match):
    with pytest.raises(InputError, match=match):
        localizer.localize(frame, audio, rate)


@pytest.mark.parametrize("policy", ["tile", "pad"])
def test_short_audio_policies(policy):
    loc = Localizer(create_model("noprior"), short_audio=policy)
    frame, audio = _scene(5)
    result = loc.localize(frame, audio[: RATE // 2], RATE)
    assert result.sound_map.shape == (7, 7)


def test_ezvsl_reports_one_object():
    loc = Localizer(create_model("ezvsl", object_prior="none"))
    frame, audio = _scene(6)
    result = loc.localize(frame, soxr.resample(audio, RATE, 16000).astype(np.float32), 16000)
    assert len(result.objects) == 1
    assert result.objects[0].mask.any() and result.objects[0].heatmap.max() == pytest.approx(1.0)
