"""Rendering of tick results (pure numpy/OpenCV drawing, no window)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from streamloc.errors import InputError
from streamloc.render import PALETTE_BGR, color_for, draw_hud, draw_objects, render_tick
from streamloc.types import SoundingObject, TickResult

H, W = 240, 320
GREY = 100


def _object(obj_id: int, mask: np.ndarray, heat: np.ndarray, score: float) -> SoundingObject:
    ys, xs = np.nonzero(mask)
    w = heat[ys, xs]
    return SoundingObject(id=obj_id, heatmap=heat.astype(np.float32), mask=mask,
                          box=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                          centroid=(float((xs * w).sum() / w.sum()), float((ys * w).sum() / w.sum())),
                          score=score)


def _scene(ids=(0, 1)) -> tuple[np.ndarray, TickResult]:
    """A grey frame; object ids[0] is a disk (centre 100, 120; radius 40), ids[1] a square."""
    yy, xx = np.mgrid[0:H, 0:W]
    r2 = (xx - 100) ** 2 + (yy - 120) ** 2
    disk = r2 <= 40**2
    disk_heat = np.exp(-r2 / (2 * 25.0**2))
    square = np.zeros((H, W), bool)
    square[150:210, 220:290] = True
    objects = [_object(ids[0], disk, disk_heat, 0.83), _object(ids[1], square, square.astype(float), 0.41)]
    frame = np.full((H, W, 3), GREY, np.uint8)
    result = TickResult(frame_size=(H, W), sound_map=np.zeros((7, 7), np.float32), objects=objects,
                        time_ns=1_000_000_000, timings_ms={"total": 31.0}, flags={"late"})
    return frame, result


def _erode(mask: np.ndarray, px: int) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(bool)


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(bool)


def _dist(img: np.ndarray, color) -> np.ndarray:
    return np.abs(img.astype(int) - np.asarray(color, int)).max(axis=-1)


def test_palette_is_indexed_by_id():
    assert color_for(0) == PALETTE_BGR[0]
    assert color_for(1) == PALETTE_BGR[1]
    assert color_for(len(PALETTE_BGR)) == color_for(0)
    assert len(set(PALETTE_BGR)) == len(PALETTE_BGR)
    assert color_for(3, [(1, 2, 3)]) == (1, 2, 3)
    with pytest.raises(InputError):
        color_for(0, [])


def test_inside_masks_moves_towards_colour_outside_unchanged():
    frame, result = _scene()
    out = draw_objects(frame, result, show_ids=False)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert (frame == GREY).all(), "the input frame must not be modified"
    union = np.zeros((H, W), bool)
    for obj in result.objects:
        color = color_for(obj.id)
        inside = _erode(obj.mask, 3)
        before, after = _dist(frame[inside], color), _dist(out[inside], color)
        assert (after < before).all(), f"object {obj.id}: pixels inside the mask must move towards its colour"
        union |= _dilate(obj.mask, 3)
    assert (out[~union] == frame[~union]).all(), "pixels outside every mask must be unchanged"
    # the hot centre of the disk is tinted more than its cooler rim
    c0 = color_for(0)
    assert _dist(out[120:121, 100:101], c0).item() < _dist(out[120:121, 137:138], c0).item()


def test_contours_are_drawn_in_the_object_colour():
    frame, result = _scene()
    out = draw_objects(frame, result, show_ids=False)
    for obj in result.objects:
        color = color_for(obj.id)
        boundary = obj.mask & ~_erode(obj.mask, 1)
        coloured = _dilate(_dist(out, color) <= 40, 1)
        assert coloured[boundary].mean() > 0.95, f"object {obj.id}: the contour should follow its mask boundary"
    # the square is axis-aligned: its border rows and columns are (anti-aliased) lines of the colour
    c1 = color_for(1)
    for line in (out[150, 230:280], out[209, 230:280], out[160:200, 220], out[160:200, 289]):
        assert (_dist(line, c1) <= 12).all()


def test_ids_and_scores_are_labelled_at_the_centroid():
    frame, result = _scene()
    plain = draw_objects(frame, result, show_ids=False)
    labelled = draw_objects(frame, result, show_ids=True)
    for obj in result.objects:
        cx, cy = (int(round(v)) for v in obj.centroid)
        win = (slice(cy - 8, cy + 9), slice(cx - 20, cx + 21))
        assert (plain[win] != labelled[win]).any()
        patch = labelled[win]
        assert (_dist(patch, color_for(obj.id)) == 0).sum() > 50, "label box in the object colour"
        assert (patch.max(axis=-1) < 60).sum() > 10, "dark text on the light palette colours"
    far = np.ones((H, W), bool)
    for obj in result.objects:
        far &= ~_dilate(obj.mask, 30)
    assert (plain[far] == labelled[far]).all()


def test_a_tracked_id_keeps_its_colour():
    frame, result = _scene(ids=(5, 12))
    out = draw_objects(frame, result, show_ids=False)
    inside = _erode(result.objects[1].mask, 3)
    expected = color_for(12)
    assert _dist(out[inside], expected).max() < _dist(frame[inside], expected).min()
    assert color_for(12) == PALETTE_BGR[12 % len(PALETTE_BGR)]


def test_maps_are_scaled_to_a_larger_frame_and_grey_input_is_accepted():
    _, result = _scene()
    big = np.full((2 * H, 2 * W), GREY, np.uint8)  # grey frame twice the size of the maps
    out = draw_objects(big, result, show_ids=False)
    assert out.shape == (2 * H, 2 * W, 3)
    c0 = color_for(0)
    assert _dist(out[240:241, 200:201], c0).item() < _dist(np.full((1, 1, 3), GREY, np.uint8), c0).item()
    assert (out[20, 20] == GREY).all()


def test_empty_and_bad_inputs():
    frame, result = _scene()
    empty = TickResult(frame_size=(H, W), sound_map=np.zeros((7, 7), np.float32), objects=[])
    assert (draw_objects(frame, empty) == frame).all()
    with pytest.raises(InputError):
        draw_objects(frame.astype(np.float32), result)
    with pytest.raises(InputError):
        draw_objects(frame, result, alpha=1.5)


def test_hud_darkens_a_strip_at_the_top_and_nothing_else():
    img = np.full((H, W, 3), 200, np.uint8)
    out = draw_hud(img, rate_hz=12.0, latency_ms=38.1, objects=2, flags={"late", "audio_overflow"},
                   extra={"cam": 0})
    assert (img == 200).all()
    top = out[:8]
    assert top.mean() < 0.7 * 200, "the strip is dark"
    assert (out[60:] == img[60:]).all(), "below the strip nothing changes"
    strip_rows = np.nonzero((out != img).any(axis=(1, 2)))[0]
    assert strip_rows.min() == 0 and strip_rows.max() < 40
    strip = out[: strip_rows.max() + 1]
    assert (strip.min(axis=-1) > 150).sum() > 20, "white text on the strip"
    yellow = (strip[..., 2] > 150) & (strip[..., 1] > 150) & (strip[..., 0] < 120)
    assert yellow.sum() > 10, "flags in yellow"


def test_hud_without_anything_to_say_leaves_the_image():
    img = np.full((50, 80, 3), 200, np.uint8)
    assert (draw_hud(img) == img).all()


def test_render_tick_is_objects_then_hud():
    frame, result = _scene()
    stats = {"rate_hz": 9.5, "latency_ms": 41.0}
    expected = draw_hud(draw_objects(frame, result), rate_hz=9.5, latency_ms=41.0, objects=2, flags={"late"})
    assert (render_tick(frame, result, stats) == expected).all()
    # without a latency in stats, the tick's own total latency is shown
    assert (render_tick(frame, result) != draw_hud(draw_objects(frame, result), objects=2, flags={"late"})).any()
