"""Drawing of tick results: per-object colour overlays, contours, ids and a status line (HUD). Pure.

Every function takes a BGR uint8 image and returns a new one; nothing here opens a window or a
file (that is `streamloc.io.sinks`). Colours come from a fixed colour-blind-friendly palette
(Okabe & Ito) indexed by object id, so an object that the pipeline tracks keeps its colour.

>>> import numpy as np
>>> from streamloc.types import SoundingObject, TickResult
>>> frame = np.full((120, 160, 3), 128, np.uint8)
>>> mask = np.zeros((120, 160), bool); mask[30:90, 40:100] = True
>>> obj = SoundingObject(id=0, heatmap=mask.astype(np.float32), mask=mask, box=(40, 30, 100, 90),
...                      centroid=(69.5, 59.5), score=0.8)
>>> result = TickResult(frame_size=(120, 160), sound_map=np.zeros((7, 7), np.float32), objects=[obj])
>>> out = render_tick(frame, result, {"rate_hz": 10.0, "latency_ms": 35.2})
>>> out.shape, out.dtype, bool((out[100:, :] == frame[100:, :]).all())
((120, 160, 3), dtype('uint8'), True)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import cv2
import numpy as np

from streamloc.errors import InputError
from streamloc.types import TickResult

__all__ = ["PALETTE_BGR", "color_for", "draw_objects", "draw_hud", "render_tick", "hud_text"]

#: Okabe-Ito colour-blind-safe palette (black left out), as BGR tuples, in the order ids use it:
#: orange, sky blue, bluish green, yellow, blue, vermillion, reddish purple.
PALETTE_BGR: tuple[tuple[int, int, int], ...] = (
    (0, 159, 230),
    (233, 180, 86),
    (115, 158, 0),
    (66, 228, 240),
    (178, 114, 0),
    (0, 94, 213),
    (167, 121, 204),
)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_HUD_TEXT = (255, 255, 255)
_HUD_FLAG = (66, 228, 240)  # yellow of the palette: stands out on the dark strip


def color_for(object_id: int, palette: Sequence[Sequence[int]] | None = None) -> tuple[int, int, int]:
    """The BGR colour of an object id (ids wrap around the palette).

    >>> color_for(0), color_for(7) == color_for(0), color_for(1, [(1, 2, 3), (4, 5, 6)])
    ((0, 159, 230), True, (4, 5, 6))
    """
    pal = PALETTE_BGR if palette is None else palette
    if len(pal) == 0:
        raise InputError("the palette is empty; pass at least one (B, G, R) colour or palette=None")
    c = pal[int(object_id) % len(pal)]
    return int(c[0]), int(c[1]), int(c[2])


def _as_bgr(frame: np.ndarray) -> np.ndarray:
    """A contiguous HxWx3 uint8 copy of a BGR (or grey, or BGRA) uint8 frame."""
    a = np.asarray(frame)
    if a.dtype != np.uint8:
        raise InputError(f"expected a uint8 BGR image, got dtype {a.dtype}; convert with "
                         "np.clip(x, 0, 255).astype(np.uint8)")
    if a.ndim == 2:
        return cv2.cvtColor(a, cv2.COLOR_GRAY2BGR)
    if a.ndim == 3 and a.shape[2] == 3:
        return np.array(a, copy=True, order="C")
    if a.ndim == 3 and a.shape[2] == 4:
        return cv2.cvtColor(a, cv2.COLOR_BGRA2BGR)
    if a.ndim == 3 and a.shape[2] == 1:
        return cv2.cvtColor(a[:, :, 0], cv2.COLOR_GRAY2BGR)
    raise InputError(f"expected an HxWx3 BGR image, got shape {a.shape}")


@lru_cache(maxsize=4096)
def _text_size(text: str, scale: float, thick: int) -> tuple[tuple[int, int], int]:
    """cv2.getTextSize, cached: it costs ~0.2 ms a call and labels repeat from tick to tick."""
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    return (int(tw), int(th)), int(base)


def _text_scale(h: int, w: int) -> tuple[float, int]:
    """Font scale and thickness readable at this image size."""
    scale = float(np.clip(min(h, w) / 600.0, 0.35, 1.2))
    return scale, 1 if scale < 0.8 else 2


def _fit_to(a: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    h, w = size
    if a.shape[:2] == (h, w):
        return a
    return cv2.resize(a, (w, h), interpolation=interpolation)


def _label(out: np.ndarray, text: str, anchor: tuple[float, float], color: tuple[int, int, int]) -> None:
    """A filled box in `color` centred on `anchor` with the text in black or white (in place)."""
    h, w = out.shape[:2]
    scale, thick = _text_scale(h, w)
    (tw, th), base = _text_size(text, scale, thick)
    pad = max(2, int(round(3 * scale)))
    bw, bh = tw + 2 * pad, th + base + 2 * pad
    x0 = int(np.clip(round(anchor[0] - bw / 2), 0, max(0, w - bw)))
    y0 = int(np.clip(round(anchor[1] - bh / 2), 0, max(0, h - bh)))
    cv2.rectangle(out, (x0, y0), (x0 + bw - 1, y0 + bh - 1), color, thickness=-1)
    luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    cv2.putText(out, text, (x0 + pad, y0 + pad + th), _FONT, scale, ink, thick, cv2.LINE_AA)


def draw_objects(frame_bgr: np.ndarray, result: TickResult, *, alpha: float = 0.45,
                 palette: Sequence[Sequence[int]] | None = None, show_ids: bool = True) -> np.ndarray:
    """Overlay the sounding objects of `result` on a frame; returns a new BGR uint8 image.

    For each object, in the order of `result.objects`: the pixels of its mask are blended towards
    its colour with weight ``alpha * (0.35 + 0.65 * heatmap)`` (so the whole region is tinted and
    the hot part most), its mask contour is drawn in its colour, and (with `show_ids`) a label
    ``"#<id> <score>"`` sits on its centroid (or its box centre). Pixels outside every mask are left
    unchanged. Maps made at another size than the frame (``result.frame_size``) are resized.
    A grey or BGRA frame is converted to BGR.

    >>> import numpy as np
    >>> from streamloc.types import SoundingObject, TickResult
    >>> m = np.zeros((60, 80), bool); m[10:30, 10:30] = True
    >>> o = SoundingObject(id=2, heatmap=m.astype(np.float32), mask=m, box=(10, 10, 30, 30),
    ...                    centroid=(19.5, 19.5), score=0.5)
    >>> r = TickResult(frame_size=(60, 80), sound_map=np.zeros((7, 7), np.float32), objects=[o])
    >>> img = np.zeros((60, 80, 3), np.uint8)
    >>> out = draw_objects(img, r, show_ids=False)
    >>> out[20, 20].tolist(), out[50, 70].tolist()  # inside: towards (115, 158, 0); outside: unchanged
    ([52, 71, 0], [0, 0, 0])
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    out = _as_bgr(frame_bgr)
    h, w = out.shape[:2]
    fh, fw = (int(result.frame_size[0]), int(result.frame_size[1])) if result.frame_size else (h, w)
    sx, sy = w / max(fw, 1), h / max(fh, 1)
    thickness = max(1, int(round(min(h, w) / 240)))
    labels: list[tuple[str, tuple[float, float], tuple[int, int, int]]] = []
    for obj in result.objects:
        color = color_for(obj.id, palette)
        mask = np.asarray(obj.mask)
        if mask.size == 0:
            continue
        m8 = mask.view(np.uint8) if mask.dtype == bool else (mask != 0).astype(np.uint8)
        m8 = _fit_to(np.ascontiguousarray(m8), (h, w), cv2.INTER_NEAREST)
        bx, by, bw, bh = cv2.boundingRect(m8)
        if bw == 0 or bh == 0:
            continue
        y0, y1, x0, x1 = by, by + bh, bx, bx + bw
        sub_m8 = np.ascontiguousarray(m8[y0:y1, x0:x1])
        sub_mask = sub_m8.astype(bool)
        heat = np.asarray(obj.heatmap, np.float32)
        if heat.shape[:2] == (h, w):
            sub_heat = heat[y0:y1, x0:x1]
        elif heat.size:
            sub_heat = _fit_to(heat, (h, w), cv2.INTER_LINEAR)[y0:y1, x0:x1]
        else:
            sub_heat = np.ones(sub_mask.shape, np.float32)
        weight = float(alpha) * (0.35 + 0.65 * np.clip(np.nan_to_num(sub_heat), 0.0, 1.0))
        weight = np.where(sub_mask, weight, 0.0).astype(np.float32)[:, :, None]
        region = out[y0:y1, x0:x1].astype(np.float32)
        blended = region + weight * (np.asarray(color, np.float32) - region)
        out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        contours, _ = cv2.findContours(sub_m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0))
        cv2.drawContours(out, contours, -1, color, thickness, cv2.LINE_AA)
        if show_ids:
            if obj.centroid is not None:
                anchor = (float(obj.centroid[0]) * sx, float(obj.centroid[1]) * sy)
            elif obj.box is not None:
                anchor = ((obj.box[0] + obj.box[2]) / 2 * sx, (obj.box[1] + obj.box[3]) / 2 * sy)
            else:
                anchor = ((x0 + x1) / 2, (y0 + y1) / 2)
            labels.append((f"#{int(obj.id)} {float(obj.score):.2f}", anchor, color))
    for text, anchor, color in labels:  # labels last, so that no overlay covers one
        _label(out, text, anchor, color)
    return out


def hud_text(*, rate_hz: float | None = None, latency_ms: float | None = None, objects: int | None = None,
             extra: Mapping[str, object] | None = None) -> str:
    """The status line without the flags (which `draw_hud` draws in a warning colour).

    >>> hud_text(rate_hz=9.96, latency_ms=41.27, objects=2, extra={"cam": 0})
    '10.0 Hz | p50 41.3 ms | 2 objects | cam 0'
    >>> hud_text(objects=1)
    '1 object'
    """
    parts = []
    if rate_hz is not None:
        parts.append(f"{float(rate_hz):.1f} Hz")
    if latency_ms is not None:
        parts.append(f"p50 {float(latency_ms):.1f} ms")
    if objects is not None:
        parts.append(f"{int(objects)} object" + ("" if int(objects) == 1 else "s"))
    for key, value in (extra or {}).items():
        parts.append(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}")
    return " | ".join(parts)


def _draw_hud_inplace(out: np.ndarray, text: str, flags: Sequence[str]) -> None:
    h, w = out.shape[:2]
    scale, thick = _text_scale(h, w)
    flag_text = " ".join(f.upper() for f in flags)
    sep = " | " if text and flag_text else ""
    full = text + sep + flag_text
    if not full:
        return
    (tw, th), base = _text_size(full, scale, thick)
    margin = max(3, int(round(6 * scale)))
    if tw + 2 * margin > w:  # shrink to fit the width
        scale = max(0.25, scale * (w - 2 * margin) / max(tw, 1))
        (tw, th), base = _text_size(full, scale, thick)
    strip_h = min(h, th + base + 2 * margin)
    strip = out[:strip_h]
    strip[:] = (strip.astype(np.uint16) * 2 // 5).astype(np.uint8)  # dark translucent: keeps 40 %
    y = margin + th
    x = margin
    if text:
        cv2.putText(out, text + sep, (x, y), _FONT, scale, _HUD_TEXT, thick, cv2.LINE_AA)
        x += _text_size(text + sep, scale, thick)[0][0]
    if flag_text:
        cv2.putText(out, flag_text, (x, y), _FONT, scale, _HUD_FLAG, thick, cv2.LINE_AA)


def draw_hud(image: np.ndarray, *, rate_hz: float | None = None, latency_ms: float | None = None,
             objects: int | None = None, flags: Iterable[str] = (),
             extra: Mapping[str, object] | None = None) -> np.ndarray:
    """Draw a status line on a dark translucent strip across the top; returns a new image.

    The line reads e.g. ``12.0 Hz | p50 38.1 ms | 2 objects | LATE AUDIO_OVERFLOW``: the tick rate,
    the median latency, the object count, then `extra` items (``key value``), then the flags in
    yellow, sorted. Items left as None are omitted; the text shrinks to fit narrow images.

    >>> import numpy as np
    >>> img = np.full((100, 200, 3), 200, np.uint8)
    >>> out = draw_hud(img, rate_hz=12.0, latency_ms=38.1, objects=2, flags={"late"})
    >>> bool(out[:5].mean() < img[:5].mean()), bool((out[60:] == img[60:]).all())
    (True, True)
    """
    out = _as_bgr(image)
    _draw_hud_inplace(out, hud_text(rate_hz=rate_hz, latency_ms=latency_ms, objects=objects, extra=extra),
                      sorted(str(f) for f in flags))
    return out


def render_tick(frame_bgr: np.ndarray, result: TickResult, stats: Mapping[str, object] | None = None, *,
                alpha: float = 0.45, palette: Sequence[Sequence[int]] | None = None,
                show_ids: bool = True) -> np.ndarray:
    """`draw_objects` then `draw_hud`: the picture the overlay window shows and the video records.

    `stats` may hold ``rate_hz`` (ticks per second) and ``latency_ms`` (median latency); other keys
    are shown as extra HUD items. Without ``latency_ms``, this tick's ``timings_ms["total"]`` is
    shown as ``tick <ms>``.

    >>> import numpy as np
    >>> from streamloc.types import TickResult
    >>> r = TickResult(frame_size=(48, 64), sound_map=np.zeros((7, 7), np.float32), objects=[],
    ...                flags={"silent"}, timings_ms={"total": 12.5})
    >>> render_tick(np.zeros((48, 64, 3), np.uint8), r).shape
    (48, 64, 3)
    """
    out = draw_objects(frame_bgr, result, alpha=alpha, palette=palette, show_ids=show_ids)
    stats = dict(stats or {})
    rate = stats.pop("rate_hz", None)
    latency = stats.pop("latency_ms", None)
    extra: dict[str, object] = {}
    if latency is None and "total" in result.timings_ms:
        extra["tick"] = f"{float(result.timings_ms['total']):.1f} ms"
    extra.update(stats)
    _draw_hud_inplace(out, hud_text(rate_hz=None if rate is None else float(rate),
                                    latency_ms=None if latency is None else float(latency),
                                    objects=result.num_objects, extra=extra),
                      sorted(str(f) for f in result.flags))
    return out
