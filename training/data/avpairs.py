"""Audio-visual scenes composed from (object image with alpha, object sound) pairs — pure part.

Everything here is numpy/OpenCV on arrays already in memory: no file, no clock, no global random
state. A scene is a function of ``(pool, backgrounds, protocol, seed, split, index, config)``
only, so the same arguments give the same pixels and samples bit for bit.
Inputs (Tux Paint stamps joined with the hand-made catalog, FluidR3 instrument notes, wallpaper
backgrounds, a user's own folder) come from :mod:`training.data.avpairs_sources`; the on-disk
format and the builder are in :mod:`training.data.avpairs_dataset`.

Protocols (``official-impls.md`` §2.3, §4.4, §5.5, §6.7)
--------------------------------------------------------
=========  ==================================================================================
``solo``   one 224² tile: a background crop with one sounding object.
``duet``   two 224² tiles side by side (224 × 448), both sounding, waveforms summed
           (VGGSound-Duet / AVGN: ``mix_waveform_sum``).
``trio``   three tiles side by side (224 × 672), all sounding, summed.
``grid``   2×2 tiles (448 × 448), two sounding and two silent, of four different classes
           (DSOL MUSIC-Synthetic; image and audio through :func:`~training.data.mixtures.grid_2x2`).
``free``   one background crop (448 × 448 by default) with 1–3 sounding and 0–2 silent objects of
           different classes pasted at random scales and places, in random order: a later paste
           occludes the earlier ones.
=========  ==================================================================================

Within one scene all objects have different labels. A tile holds its own background crop and one
object scaled so that its longer side is ``tile_scale`` × 224 and placed at random inside the tile.

Masks (exact, from alpha)
-------------------------
Objects are composited with premultiplied alpha (resized premultiplied RGB and alpha, INTER_AREA
when shrinking, INTER_LINEAR when enlarging). Object ``k`` supplies the weight
``w_k = a_k · Π_{j pasted after k} (1 − a_j)`` of every pixel's colour (the background supplies the
rest). Its mask is ``w_k > 0.5``: the pixels where it supplies more than half of the colour — its
*visible* alpha region. So occluded parts are not in the mask, masks of different objects never
overlap, and a pixel outside every mask has at least half of its colour from the background or
from no single object. The box is the tight half-open pixel box ``[x1, x2) × [y1, y2)`` of the
mask. In ``free`` scenes placements are redrawn (up to ``max_place_tries``) until every object
keeps at least ``min_visible`` of its own unoccluded mask area.

Audio (3-s stems, level-matched, summed)
----------------------------------------
Each sounding object gets a stem of ``duration`` s at the pool's sample rate: a sound longer than
that contributes a random window; a shorter one is **looped** (tiled end to end starting at a
random phase). Each stem is then scaled to the same *active* RMS, ``target_rms_dbfs`` (default
−26 dBFS): the RMS over its 1024-sample frames whose own RMS is within 30 dB of the loudest frame,
so the gaps of a looped short sound do not lower its level. Optional ``level_jitter_db`` draws a
per-stem gain offset. The mixture is :func:`~training.data.mixtures.mix_waveform_sum` of the
stems (no rescaling of the sum); if its peak would exceed ``max_peak`` all stems of the scene are
scaled by the same factor first. The stems are then rounded to the 16-bit grid (multiples of
2⁻¹⁵), so their float32 sum is exact and the mixture is exactly the sum of the stems kept, in
memory and as 16-bit PCM on disk. Silent objects have no stem and contribute nothing.

Splits
------
Scene ``index`` of split ``s`` is drawn from ``SeedSequence([seed, protocol code, SPLIT_BASE[s] +
index])`` — train, val and test are disjoint seed ranges over the same pair pool (new
compositions of known objects). The open-set splits (as EZ-VSL's heard/unheard) restrict the
pool by class: :func:`openset_partition` splits the labels deterministically into *heard* and
*unheard* halves (stratified by category); ``openset-train``/``openset-val``/
``openset-test-heard`` use only heard classes (sounding and silent objects alike) and
``openset-test-unheard`` only unheard ones.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from training.data.mixtures import grid_2x2, mix_waveform_sum

__all__ = [
    "BUILDER_VERSION",
    "PROTOCOLS",
    "SPLITS",
    "SPLIT_BASE",
    "AVPair",
    "ObjectMedia",
    "PairPool",
    "Background",
    "SceneConfig",
    "SceneObject",
    "Scene",
    "compose_scene",
    "openset_partition",
    "split_labels",
    "scene_rng",
    "active_rms",
    "make_stem",
    "level_match",
    "trim_silence",
    "crop_to_alpha",
    "resize_rgba_premultiplied",
    "composite",
    "crop_background",
    "generated_backgrounds",
    "mask_box",
]

BUILDER_VERSION = "1.0.0"
PROTOCOLS = ("solo", "duet", "trio", "grid", "free")
_PROTOCOL_CODE = {"solo": 1, "duet": 2, "trio": 3, "grid": 4, "free": 5}
SPLITS = (
    "train",
    "val",
    "test",
    "openset-train",
    "openset-val",
    "openset-test-heard",
    "openset-test-unheard",
)
#: First scene id of each split; a split holds at most 10 million scenes.
SPLIT_BASE = {s: i * 10_000_000 for i, s in enumerate(SPLITS)}
_SPLIT_SIZE = 10_000_000
_HEARD_SPLITS = ("openset-train", "openset-val", "openset-test-heard")


# --------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class AVPair:
    """One (object image, object sound) pair and where it comes from.

    ``image_ref`` / ``sound_ref`` are portable references written into annotations
    (``PACKAGE:path/inside/package`` or a path relative to a user folder); ``image_path`` /
    ``sound_path`` are the files read on this machine.
    """

    pair_id: str
    label: str
    category: str
    image_path: str
    sound_path: str
    image_ref: str
    sound_ref: str
    source: str  # "tuxpaint", "fluidr3", "user"
    association: str  # "direct", "class" (image of the class paired with a sound of the class), "user"
    license: str

    def as_dict(self) -> dict:
        return {
            "pair_id": self.pair_id,
            "label": self.label,
            "category": self.category,
            "image": self.image_ref,
            "sound": self.sound_ref,
            "source": self.source,
            "association": self.association,
            "license": self.license,
        }


@dataclass(frozen=True)
class ObjectMedia:
    """A pair's media in memory: RGBA uint8 cropped to its alpha box, mono float32 sound."""

    pair: AVPair
    rgba: np.ndarray  # (h, w, 4) uint8, RGB order
    sound: np.ndarray  # (n,) float32 at PairPool.sample_rate

    def __post_init__(self) -> None:
        if self.rgba.ndim != 3 or self.rgba.shape[2] != 4 or self.rgba.dtype != np.uint8:
            raise ValueError(f"{self.pair.pair_id}: rgba must be (h, w, 4) uint8, got {self.rgba.shape} {self.rgba.dtype}")
        if self.sound.ndim != 1 or self.sound.dtype != np.float32 or len(self.sound) == 0:
            raise ValueError(f"{self.pair.pair_id}: sound must be non-empty 1-D float32")


class PairPool:
    """The media of all kept pairs at one sample rate, grouped by label (sorted)."""

    def __init__(self, items: Sequence[ObjectMedia], sample_rate: int) -> None:
        if not items:
            raise ValueError("PairPool: no pairs")
        ids = [m.pair.pair_id for m in items]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"PairPool: duplicate pair ids {dup}")
        self.sample_rate = int(sample_rate)
        self.items = sorted(items, key=lambda m: m.pair.pair_id)
        self.by_label: dict[str, list[ObjectMedia]] = {}
        for m in self.items:
            self.by_label.setdefault(m.pair.label, []).append(m)
        self.labels: list[str] = sorted(self.by_label)
        self.category_of: dict[str, str] = {}
        for lab, ms in self.by_label.items():
            cats = sorted({m.pair.category for m in ms})
            self.category_of[lab] = cats[0]

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class Background:
    """A background picture (RGB uint8) and its provenance."""

    bg_id: str
    image: np.ndarray
    ref: str = ""
    license: str = ""


# --------------------------------------------------------------------------------------------
# configuration and results


@dataclass(frozen=True)
class SceneConfig:
    duration: float = 3.0
    tile: int = 224
    free_size: tuple[int, int] = (448, 448)  # (height, width)
    tile_scale: tuple[float, float] = (0.6, 0.92)  # object's longer side / tile side
    free_scale: tuple[float, float] = (0.22, 0.5)  # object's longer side / min(canvas side)
    free_sounding: tuple[int, int] = (1, 3)
    free_silent: tuple[int, int] = (0, 2)
    max_upscale: float = 3.0
    background_scale: tuple[float, float] = (0.35, 1.0)  # crop side / largest crop of that aspect
    min_visible: float = 0.5
    max_place_tries: int = 50
    target_rms_dbfs: float = -26.0
    level_jitter_db: float = 0.0
    max_peak: float = 0.99
    openset_seed: int = 0

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


@dataclass
class SceneObject:
    index: int
    pair_id: str
    label: str
    category: str
    sounding: bool
    mask: np.ndarray  # (H, W) bool, visible region
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 pixels, half-open
    placement: tuple[int, int, int, int]  # x, y, w, h of the pasted (resized) image
    paste_order: int
    tile: int | None
    full_area: int  # pixels of w > 0.5 if nothing occluded it
    stem_index: int | None = None
    gain: float | None = None  # linear gain applied to the source (incl. headroom)
    sound_offset: int | None = None  # first source sample used (phase of the loop)
    looped: bool | None = None
    alpha: np.ndarray | None = field(default=None, repr=False)  # (H, W) float32 layer alpha

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def visible_fraction(self) -> float:
        return self.area / self.full_area if self.full_area else 0.0


@dataclass
class Scene:
    protocol: str
    split: str
    index: int
    scene_id: int
    seed: int
    image: np.ndarray  # (H, W, 3) uint8 RGB
    objects: list[SceneObject]
    stems: np.ndarray  # (n_sounding, n_samples) float32, in stem_index order
    mixture: np.ndarray  # (n_samples,) float32 = mix_waveform_sum(stems)
    sample_rate: int
    backgrounds: list[dict]
    tiles: list[tuple[int, int, int, int]]  # x, y, w, h of each tile (one entry for free)
    headroom_gain: float = 1.0
    background: np.ndarray | None = field(default=None, repr=False)  # (H, W, 3) uint8, keep_alpha only

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def label_map(self) -> np.ndarray:
        """uint8 (H, W): 0 background, ``k + 1`` where object ``k`` is visible."""
        out = np.zeros(self.image.shape[:2], np.uint8)
        for o in self.objects:
            out[o.mask] = o.index + 1
        return out

    @property
    def sounding_mask(self) -> np.ndarray:
        out = np.zeros(self.image.shape[:2], bool)
        for o in self.objects:
            if o.sounding:
                out |= o.mask
        return out


# --------------------------------------------------------------------------------------------
# splits


def scene_rng(seed: int, protocol: str, split: str, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of ``split`` (seed ranges per split)."""
    if protocol not in _PROTOCOL_CODE:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if split not in SPLIT_BASE:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if not 0 <= int(index) < _SPLIT_SIZE:
        raise ValueError(f"scene index must be in [0, {_SPLIT_SIZE}), got {index}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    ss = np.random.SeedSequence([int(seed), _PROTOCOL_CODE[protocol], SPLIT_BASE[split] + int(index)])
    return np.random.default_rng(ss)


def openset_partition(category_of: dict[str, str], seed: int = 0) -> tuple[list[str], list[str]]:
    """(heard, unheard) labels: a deterministic half/half split, stratified by category.

    Labels are ordered by (category, sha256(f"{seed}/{label}")) and alternately assigned to
    heard and unheard, so every category with two or more labels lands on both sides.
    """
    def key(lab: str) -> tuple[str, str]:
        return (category_of[lab], hashlib.sha256(f"{seed}/{lab}".encode()).hexdigest())

    order = sorted(category_of, key=key)
    heard = sorted(order[0::2])
    unheard = sorted(order[1::2])
    return heard, unheard


def split_labels(pool: PairPool, split: str, openset_seed: int = 0) -> list[str]:
    """Labels a scene of ``split`` may use."""
    if split not in SPLIT_BASE:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if not split.startswith("openset"):
        return list(pool.labels)
    heard, unheard = openset_partition(pool.category_of, openset_seed)
    return heard if split in _HEARD_SPLITS else unheard


# --------------------------------------------------------------------------------------------
# audio


def trim_silence(x: np.ndarray, floor_db: float = -50.0) -> np.ndarray:
    """``x`` without its leading and trailing samples below ``floor_db`` relative to its peak."""
    a = np.abs(x)
    peak = float(a.max()) if len(a) else 0.0
    if peak == 0.0:
        return x
    idx = np.flatnonzero(a >= peak * 10.0 ** (floor_db / 20.0))
    return x[idx[0] : idx[-1] + 1]


def active_rms(x: np.ndarray, frame: int = 1024, floor_db: float = -30.0) -> float:
    """RMS over the frames whose RMS is within ``floor_db`` of the loudest frame (0 for silence)."""
    x = np.asarray(x, np.float64)
    if len(x) == 0:
        return 0.0
    n = max(len(x) // frame, 1)
    fr = x[: n * frame].reshape(n, -1) if len(x) >= frame else x.reshape(1, -1)
    ms = np.mean(fr * fr, axis=1)
    top = float(ms.max())
    if top == 0.0:
        return 0.0
    active = ms >= top * 10.0 ** (floor_db / 10.0)
    return float(math.sqrt(float(ms[active].mean())))


def make_stem(sound: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int, bool]:
    """``n`` samples of ``sound``: a random window, or the sound looped from a random phase.

    Returns (stem float32, first source sample, looped).
    """
    L = len(sound)
    if L == 0:
        raise ValueError("make_stem: empty sound")
    if L >= n:
        start = int(rng.integers(0, L - n + 1))
        return np.array(sound[start : start + n], np.float32), start, False
    start = int(rng.integers(0, L))
    reps = (start + n) // L + 1
    return np.array(np.tile(sound, reps)[start : start + n], np.float32), start, True


def level_match(stem: np.ndarray, target_rms_dbfs: float, jitter_db: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """``stem`` scaled to active RMS ``target_rms_dbfs`` (+ a uniform ±``jitter_db`` offset)."""
    offset = float(rng.uniform(-jitter_db, jitter_db)) if jitter_db > 0 else 0.0
    r = active_rms(stem)
    if r == 0.0:
        raise ValueError("level_match: the stem is digital silence")
    gain = 10.0 ** ((target_rms_dbfs + offset) / 20.0) / r
    return (stem.astype(np.float64) * gain).astype(np.float32), gain


# --------------------------------------------------------------------------------------------
# images


def crop_to_alpha(rgba: np.ndarray) -> np.ndarray:
    """``rgba`` cropped to the bounding box of its non-zero alpha (raises if fully transparent)."""
    a = rgba[..., 3]
    rows = np.flatnonzero(a.any(axis=1))
    cols = np.flatnonzero(a.any(axis=0))
    if len(rows) == 0:
        raise ValueError("image is fully transparent")
    return np.ascontiguousarray(rgba[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])


def resize_rgba_premultiplied(rgba: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """(premultiplied RGB float32 (h, w, 3) in 0..255, alpha float32 (h, w) in 0..1) at w × h."""
    import cv2

    a = rgba[..., 3].astype(np.float32) / 255.0
    pre = rgba[..., :3].astype(np.float32) * a[..., None]
    src_h, src_w = rgba.shape[:2]
    if (w, h) != (src_w, src_h):
        interp = cv2.INTER_AREA if w * h < src_w * src_h else cv2.INTER_LINEAR
        pre = cv2.resize(pre, (w, h), interpolation=interp)
        a = cv2.resize(a, (w, h), interpolation=interp)
    a = np.clip(a, 0.0, 1.0)
    pre = np.clip(pre, 0.0, 255.0 * a[..., None])
    return np.ascontiguousarray(pre, np.float32), np.ascontiguousarray(a, np.float32)


def composite(
    background: np.ndarray, layers: Sequence[tuple[np.ndarray, np.ndarray, int, int]]
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Paste premultiplied ``layers`` (pre RGB, alpha, x, y) in order over ``background``.

    Returns (image uint8, full-canvas alpha per layer, visible weight per layer).
    """
    H, W = background.shape[:2]
    out = background.astype(np.float32)
    alphas: list[np.ndarray] = []
    for pre, a, x, y in layers:
        h, w = a.shape
        if x < 0 or y < 0 or x + w > W or y + h > H:
            raise ValueError(f"layer at ({x}, {y}) size {w}×{h} leaves the {W}×{H} canvas")
        full = np.zeros((H, W), np.float32)
        full[y : y + h, x : x + w] = a
        region = out[y : y + h, x : x + w]
        out[y : y + h, x : x + w] = pre + (1.0 - a[..., None]) * region
        alphas.append(full)
    weights: list[np.ndarray] = [None] * len(alphas)  # type: ignore[list-item]
    trans = np.ones((H, W), np.float32)
    for k in range(len(alphas) - 1, -1, -1):
        weights[k] = alphas[k] * trans
        trans = trans * (1.0 - alphas[k])
    img = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return img, alphas, weights


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight half-open pixel box (x1, y1, x2, y2) of a non-empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        raise ValueError("empty mask has no box")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def crop_background(
    bg: Background, out_h: int, out_w: int, rng: np.random.Generator, scale: tuple[float, float] = (0.35, 1.0)
) -> tuple[np.ndarray, dict]:
    """A random crop of ``bg`` with the output's aspect, randomly mirrored, resized to out_h × out_w."""
    import cv2

    H, W = bg.image.shape[:2]
    aspect = out_w / out_h
    if W / H > aspect:
        ch, cw = H, H * aspect
    else:
        cw, ch = W, W / aspect
    s = float(rng.uniform(scale[0], scale[1]))
    cw = max(1, min(W, int(round(cw * s))))
    ch = max(1, min(H, int(round(ch * s))))
    x0 = int(rng.integers(0, W - cw + 1))
    y0 = int(rng.integers(0, H - ch + 1))
    flip = bool(rng.random() < 0.5)
    crop = bg.image[y0 : y0 + ch, x0 : x0 + cw]
    interp = cv2.INTER_AREA if cw * ch > out_w * out_h else cv2.INTER_LINEAR
    out = cv2.resize(crop, (out_w, out_h), interpolation=interp)
    if flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out, np.uint8), {"bg_id": bg.bg_id, "crop_xywh": [x0, y0, cw, ch], "mirrored": flip}


def generated_backgrounds(n: int = 12, seed: int = 0, size: tuple[int, int] = (600, 900)) -> list[Background]:
    """Deterministic synthetic backgrounds (colour gradients with smooth texture) for folders
    that come without photographs."""
    import cv2

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7_771]))
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    out = []
    for i in range(n):
        c0 = rng.uniform(20, 235, 3).astype(np.float32)
        c1 = rng.uniform(20, 235, 3).astype(np.float32)
        ang = rng.uniform(0, 2 * np.pi)
        t = (np.cos(ang) * xx / W + np.sin(ang) * yy / H)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = c0 + (c1 - c0) * t[..., None]
        low = rng.normal(0, 18, (H // 40 + 2, W // 40 + 2, 3)).astype(np.float32)
        img = img + cv2.resize(low, (W, H), interpolation=cv2.INTER_CUBIC)
        out.append(Background(f"generated-{i:02d}", np.clip(np.rint(img), 0, 255).astype(np.uint8), "generated", "CC0-1.0"))
    return out


# --------------------------------------------------------------------------------------------
# composition


def _pick(pool: PairPool, labels: Sequence[str], k: int, rng: np.random.Generator) -> list[ObjectMedia]:
    if k > len(labels):
        raise ValueError(f"need {k} different classes but the split's pool has only {len(labels)}: {list(labels)}")
    idx = rng.choice(len(labels), size=k, replace=False)
    out = []
    for i in idx:
        cands = pool.by_label[labels[int(i)]]
        out.append(cands[int(rng.integers(0, len(cands)))])
    return out


def _scaled_size(rgba: np.ndarray, longer: float, max_upscale: float) -> tuple[int, int]:
    h0, w0 = rgba.shape[:2]
    s = min(longer / max(h0, w0), max_upscale)
    return max(1, int(round(w0 * s))), max(1, int(round(h0 * s)))


def _tile_layer(m: ObjectMedia, tile: int, cfg: SceneConfig, rng: np.random.Generator):
    longer = float(rng.uniform(*cfg.tile_scale)) * tile
    w, h = _scaled_size(m.rgba, longer, cfg.max_upscale)
    w, h = min(w, tile), min(h, tile)
    pre, a = resize_rgba_premultiplied(m.rgba, w, h)
    x = int(rng.integers(0, tile - w + 1))
    y = int(rng.integers(0, tile - h + 1))
    return pre, a, x, y


def compose_scene(
    pool: PairPool,
    backgrounds: Sequence[Background],
    protocol: str,
    *,
    seed: int = 0,
    split: str = "train",
    index: int = 0,
    config: SceneConfig | None = None,
    keep_alpha: bool = False,
) -> Scene:
    """Scene ``index`` of ``split`` for ``protocol`` (see the module docstring).

    ``keep_alpha`` keeps each object's full-canvas layer alpha in :attr:`SceneObject.alpha`
    and the background canvas in :attr:`Scene.background` (for checks; not written to disk).
    """
    cfg = config or SceneConfig()
    if not backgrounds:
        raise ValueError("compose_scene: no backgrounds")
    rng = scene_rng(seed, protocol, split, index)
    labels = split_labels(pool, split, cfg.openset_seed)
    n_samples = int(round(cfg.duration * pool.sample_rate))
    T = cfg.tile

    if protocol == "free":
        n_snd = int(rng.integers(cfg.free_sounding[0], cfg.free_sounding[1] + 1))
        n_sil = int(rng.integers(cfg.free_silent[0], cfg.free_silent[1] + 1))
        n_snd = min(n_snd, len(labels))
        n_sil = min(n_sil, len(labels) - n_snd)
        chosen = _pick(pool, labels, n_snd + n_sil, rng)
        sounding = [True] * n_snd + [False] * n_sil
        H, W = cfg.free_size
        bg_i = int(rng.integers(0, len(backgrounds)))
        canvas, bg_meta = crop_background(backgrounds[bg_i], H, W, rng, cfg.background_scale)
        sized = []
        for m in chosen:
            longer = float(rng.uniform(*cfg.free_scale)) * min(H, W)
            w, h = _scaled_size(m.rgba, longer, cfg.max_upscale)
            w, h = min(w, W), min(h, H)
            sized.append((m, resize_rgba_premultiplied(m.rgba, w, h)))
        order = [int(i) for i in rng.permutation(len(chosen))]
        best = None
        for _ in range(max(1, cfg.max_place_tries)):
            pos = []
            for (m, (pre, a)) in sized:
                h, w = a.shape
                pos.append((int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))))
            layers = [(sized[k][1][0], sized[k][1][1], pos[k][0], pos[k][1]) for k in order]
            img, alphas, weights = composite(canvas, layers)
            masks = [wt > 0.5 for wt in weights]
            full = [int((al > 0.5).sum()) for al in alphas]
            fr = min((mk.sum() / f if f else 0.0) for mk, f in zip(masks, full))
            if best is None or fr > best[0]:
                best = (fr, pos, img, alphas, masks, full)
            if fr >= cfg.min_visible:
                break
        _, pos, img, alphas, masks, full = best
        objects = []
        for rank, k in enumerate(order):
            m = chosen[k]
            pre, a = sized[k][1]
            objects.append(
                SceneObject(
                    index=k, pair_id=m.pair.pair_id, label=m.pair.label, category=m.pair.category,
                    sounding=sounding[k], mask=masks[rank], box=(0, 0, 0, 0),
                    placement=(pos[k][0], pos[k][1], a.shape[1], a.shape[0]), paste_order=rank,
                    tile=None, full_area=full[rank], alpha=alphas[rank] if keep_alpha else None,
                )
            )
        objects.sort(key=lambda o: o.index)
        image = img
        frames = []
        background = canvas
        bgs = [bg_meta]
        tiles = [(0, 0, W, H)]
    else:
        n_tiles = {"solo": 1, "duet": 2, "trio": 3, "grid": 4}[protocol]
        chosen = _pick(pool, labels, n_tiles, rng)
        if protocol == "grid":
            snd_idx = sorted(int(i) for i in rng.choice(4, size=2, replace=False))
            sounding = [t in snd_idx for t in range(4)]
        else:
            sounding = [True] * n_tiles
        frames, tile_objs, bgs, tile_bgs = [], [], [], []
        for t, m in enumerate(chosen):
            bg_i = int(rng.integers(0, len(backgrounds)))
            tile_bg, bg_meta = crop_background(backgrounds[bg_i], T, T, rng, cfg.background_scale)
            pre, a, x, y = _tile_layer(m, T, cfg, rng)
            img, alphas, weights = composite(tile_bg, [(pre, a, x, y)])
            frames.append(img)
            tile_bgs.append(tile_bg)
            tile_objs.append((m, x, y, a, alphas[0], weights[0] > 0.5))
            bgs.append(bg_meta)
        if protocol == "grid":
            image = grid_2x2(frames, sounding).image
            background = grid_2x2(tile_bgs, sounding).image
            tiles = [((t % 2) * T, (t // 2) * T, T, T) for t in range(4)]
        else:
            image = np.ascontiguousarray(np.concatenate(frames, axis=1))
            background = np.concatenate(tile_bgs, axis=1)
            tiles = [(t * T, 0, T, T) for t in range(n_tiles)]
        H, W = image.shape[:2]
        objects = []
        for t, (m, x, y, a, al, mk) in enumerate(tile_objs):
            tx, ty = tiles[t][:2]
            mask = np.zeros((H, W), bool)
            mask[ty : ty + T, tx : tx + T] = mk
            full_alpha = None
            if keep_alpha:
                full_alpha = np.zeros((H, W), np.float32)
                full_alpha[ty : ty + T, tx : tx + T] = al
            objects.append(
                SceneObject(
                    index=t, pair_id=m.pair.pair_id, label=m.pair.label, category=m.pair.category,
                    sounding=sounding[t], mask=mask, box=(0, 0, 0, 0),
                    placement=(tx + x, ty + y, a.shape[1], a.shape[0]), paste_order=t, tile=t,
                    full_area=int(mk.sum()), alpha=full_alpha,
                )
            )
    for o in objects:
        if not o.mask.any():
            raise ValueError(f"{protocol} scene {split}/{index}: object {o.pair_id} has no visible pixel")
        o.box = mask_box(o.mask)

    # audio: stems of the sounding objects in object order
    media = {m.pair.pair_id: m for m in chosen}
    stems, gains = [], []
    for o in objects:
        if not o.sounding:
            continue
        stem, off, looped = make_stem(media[o.pair_id].sound, n_samples, rng)
        stem, gain = level_match(stem, cfg.target_rms_dbfs, cfg.level_jitter_db, rng)
        o.stem_index, o.sound_offset, o.looped = len(stems), off, looped
        stems.append(stem)
        gains.append(gain)
    stacked = np.stack(stems).astype(np.float32)
    headroom = 1.0
    peak = float(np.abs(mix_waveform_sum(list(stacked))).max())
    if peak > cfg.max_peak:
        headroom = cfg.max_peak / peak
        stacked = (stacked.astype(np.float64) * headroom).astype(np.float32)
    # 16-bit grid: the float32 sum of such stems is exact, and so is the mixture as 16-bit PCM
    q = np.clip(np.round(stacked.astype(np.float64) * 32768.0), -32768, 32767)
    stacked = (q / 32768.0).astype(np.float32)
    for o in objects:
        if o.stem_index is not None:
            o.gain = gains[o.stem_index] * headroom
    if protocol == "grid":
        waves = []
        for o in objects:
            waves.append(stacked[o.stem_index] if o.sounding else np.zeros(n_samples, np.float32))
        mixture = grid_2x2(frames, [o.sounding for o in objects], waves).audio
    else:
        mixture = mix_waveform_sum(list(stacked))
    return Scene(
        protocol=protocol, split=split, index=int(index), scene_id=SPLIT_BASE[split] + int(index),
        seed=int(seed), image=image, objects=objects, stems=stacked,
        mixture=np.ascontiguousarray(mixture, np.float32), sample_rate=pool.sample_rate,
        backgrounds=bgs, tiles=tiles, headroom_gain=headroom,
        background=np.ascontiguousarray(background) if keep_alpha else None,
    )
