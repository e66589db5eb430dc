"""The bundled demo clip: one ~15-s audio-visual scene whose objects start and stop sounding.

Built by the ``avpairs`` benchmark builder from the same pair pool and backgrounds
(``python -m training.data.avpairs_cli demo --out streamloc/assets/demo``) and played by
``streamloc demo`` through the live pipeline.

The clip (default :class:`DemoConfig`)
--------------------------------------
* 640 × 480 pixels at 15 fps, 15 s, one photographic background (a wallpaper crop), three
  objects of different classes pasted side by side (one per third of the width, never
  overlapping) with premultiplied alpha; the picture does not move, so every frame is the same
  and one label map (``demo_clip.mask.png``) holds the exact masks (:func:`~training.data.avpairs.composite`,
  mask = visible weight > 0.5, as in the benchmark).
* A timeline in which objects start and stop sounding (:data:`DEFAULT_ROLES`)::

      object 0 (violin)   ██████████████████████████████████░░░░░░░░░░░░░░░░░░░░░░░░████████████████████
      object 1 (cow)      ░░░░░░░░░░░░░░░░░░████████████████████████████░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░
      object 2 (drum kit) ░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░  (silent)
      sounding            1       | 2      | 1      |   0 (3.5 s)      |  1
                          0       3        6        8                 11.5        15 s

  so that one, two and no sources sound at different moments; the drum kit is a silent
  distractor (a picture of a sound-maker that never sounds).
* Audio: each sounding object's sound is looped (or windowed) over the whole clip from a random
  phase (:func:`~training.data.avpairs.make_stem`), level-matched to the same active RMS
  (:func:`~training.data.avpairs.level_match`), then gated by its intervals with 10-ms
  raised-cosine fades at every onset and offset. The stems are rounded to the 16-bit grid, so
  the mixture is exactly their sum and is exactly 0 wherever no object sounds.

Pairs are chosen by label from a fixed preference list per role (with a preferred pair id), so
the default pool always gives the same objects; a pool without any listed label (e.g. a user's
folder) falls back to a seeded draw among its remaining labels. :func:`compose_demo` is pure and
deterministic (same pool, backgrounds, seed and config → same pixels and samples, bit for bit);
:func:`write_demo` encodes it (H.264 yuv420p + AAC in MP4, single-threaded, bit-exact muxing so a
rebuild gives the same bytes with the same FFmpeg) and writes the mask and the JSON description.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from training.data.avpairs import (
    BUILDER_VERSION,
    AVPair,
    Background,
    ObjectMedia,
    PairPool,
    composite,
    crop_background,
    level_match,
    make_stem,
    mask_box,
    resize_rgba_premultiplied,
)
from training.data.mixtures import mix_waveform_sum

__all__ = [
    "DEMO_FORMAT",
    "DEMO_FILES",
    "DemoRole",
    "DEFAULT_ROLES",
    "DemoConfig",
    "DemoObject",
    "DemoClip",
    "choose_demo_pairs",
    "sounding_envelope",
    "compose_demo",
    "demo_annotation",
    "write_demo",
]

DEMO_FORMAT = "streamloc-avpairs-demo/1"
#: File names written by :func:`write_demo` (key → name).
DEMO_FILES = {"video": "demo_clip.mp4", "mask": "demo_clip.mask.png", "annotation": "demo_clip.json"}
_DEMO_CODE = 6  # after the protocol codes 1–5 of avpairs.scene_rng: its own seed stream


@dataclass(frozen=True)
class DemoRole:
    """One object of the demo: label preferences and when it sounds.

    ``candidates`` are ``(label, preferred pair id)`` in order of preference (an empty or absent
    pair id takes the label's first pair by id); ``intervals`` are ``(start s, end s)`` sounding
    intervals, empty for a silent distractor.
    """

    candidates: tuple[tuple[str, str], ...]
    intervals: tuple[tuple[float, float], ...]


#: Violin 0–6 s and 11.5–15 s; cow 3–8 s; drum kit never (silent distractor). The preferred
#: pairs are PNG stamps with Tux Paint's own recordings (continuous, 2–3 s, looped), so a rebuild
#: depends only on the pinned packages: not on rsvg-convert or the fluidsynth version.
DEFAULT_ROLES: tuple[DemoRole, ...] = (
    DemoRole(
        (
            ("violin", "tp__hobbies-music-string-violin"),
            ("cello", "tp__hobbies-music-string-cello"),
            ("guitar", "tpx__hobbies-music-string-guitar_classical~fluidr3__guitar_a"),
            ("trumpet", "tpx__hobbies-music-brass-trumpet~fluidr3__trumpet_a"),
        ),
        ((0.0, 6.0), (11.5, 15.0)),
    ),
    DemoRole(
        (
            ("cow", "tp__animals-mammals-bovines-cow_white"),
            ("dog", "tp__animals-mammals-dogs-dog"),
            ("sheep", "tp__animals-mammals-bovines-sheep"),
            ("bear", "tp__animals-mammals-bears-bear"),
        ),
        ((3.0, 8.0),),
    ),
    DemoRole(
        (
            ("drum_kit", "tp__hobbies-music-percussion-drumkit"),
            ("elephant", "tp__animals-mammals-elephant"),
            ("tom_drum", "tp__hobbies-music-percussion-drum_tomtom_floor"),
        ),
        (),
    ),
)


@dataclass(frozen=True)
class DemoConfig:
    duration: float = 15.0
    fps: int = 15
    size: tuple[int, int] = (480, 640)  # (height, width)
    roles: tuple[DemoRole, ...] = DEFAULT_ROLES
    background: str = "Path"  # preferred background id; else a seeded draw among those given
    background_scale: tuple[float, float] = (0.6, 0.9)
    object_scale: tuple[float, float] = (0.40, 0.48)  # object's longer side / min(H, W)
    slot_margin: int = 6  # px kept free at each side of an object's third of the width
    max_upscale: float = 3.0
    fade_s: float = 0.010
    target_rms_dbfs: float = -26.0
    max_peak: float = 0.99

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "roles"}
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
        d["roles"] = [{"candidates": [list(c) for c in r.candidates], "intervals": [list(i) for i in r.intervals]}
                      for r in self.roles]
        return d


@dataclass
class DemoObject:
    index: int
    pair: AVPair
    mask: np.ndarray  # (H, W) bool, visible region
    box: tuple[int, int, int, int]  # x1, y1, x2, y2, half-open
    placement: tuple[int, int, int, int]  # x, y, w, h of the pasted (resized) image
    intervals: tuple[tuple[float, float], ...]
    stem_index: int | None = None
    gain: float | None = None
    sound_offset: int | None = None
    looped: bool | None = None
    alpha: np.ndarray | None = field(default=None, repr=False)  # (H, W) float32 layer alpha

    @property
    def sounding(self) -> bool:
        """Whether the object sounds at some time of the clip."""
        return bool(self.intervals)

    @property
    def label(self) -> str:
        return self.pair.label

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class DemoClip:
    """The composed demo: one picture for every frame, the stems and their mixture."""

    seed: int
    config: DemoConfig
    image: np.ndarray  # (H, W, 3) uint8 RGB, every frame
    background: np.ndarray  # (H, W, 3) uint8 RGB, the crop without objects
    background_meta: dict  # bg_id, crop_xywh, mirrored, ref, license
    objects: list[DemoObject]
    stems: np.ndarray  # (n_sounding, n_samples) float32, 16-bit grid, in stem_index order
    mixture: np.ndarray  # (n_samples,) float32 = sum of stems
    sample_rate: int
    headroom_gain: float = 1.0

    @property
    def num_frames(self) -> int:
        return int(round(self.config.duration * self.config.fps))

    @property
    def num_samples(self) -> int:
        return int(self.mixture.shape[0])

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` (RGB uint8); the picture is static."""
        if not 0 <= int(i) < self.num_frames:
            raise IndexError(f"frame {i} outside 0..{self.num_frames - 1}")
        return self.image

    def label_map(self) -> np.ndarray:
        """uint8 (H, W): 0 background, ``k + 1`` where object ``k`` is visible."""
        out = np.zeros(self.image.shape[:2], np.uint8)
        for o in self.objects:
            out[o.mask] = o.index + 1
        return out

    def sounding_at(self, t: float) -> list[int]:
        """Ids of the objects sounding at time ``t`` (s; intervals are half-open)."""
        return [o.index for o in self.objects if any(a <= t < b for a, b in o.intervals)]

    def segments(self) -> list[dict]:
        """The clip cut at every onset/offset: ``[{start_s, end_s, sounding: [ids]}, ...]``."""
        cuts = {0.0, float(self.config.duration)}
        for o in self.objects:
            for a, b in o.intervals:
                cuts.update((float(a), float(b)))
        cuts = sorted(c for c in cuts if 0.0 <= c <= self.config.duration)
        out = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            ids = self.sounding_at(0.5 * (a + b))
            if out and out[-1]["sounding"] == ids:
                out[-1]["end_s"] = b
            else:
                out.append({"start_s": a, "end_s": b, "sounding": ids})
        return out

    def composition_sha256(self) -> dict[str, str]:
        """SHA-256 of the picture, the label map and the mixture samples (rebuild checks)."""
        def h(a: np.ndarray) -> str:
            return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()

        return {"image": h(self.image), "label_map": h(self.label_map()), "mixture_float32": h(self.mixture)}


# --------------------------------------------------------------------------------------------
# composition (pure)


def _demo_rng(seed: int) -> np.random.Generator:
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), _DEMO_CODE]))


def choose_demo_pairs(pool: PairPool, roles: Sequence[DemoRole], rng: np.random.Generator) -> list[ObjectMedia]:
    """One pair per role, all of different labels: the first listed label the pool has (its
    preferred pair, else its first pair by id); a role none of whose labels is available draws
    a label among the pool's unused ones with ``rng`` (and its first pair)."""
    used: set[str] = set()
    out: list[ObjectMedia] = []
    for k, role in enumerate(roles):
        chosen = None
        for label, pair_id in role.candidates:
            if label in used or label not in pool.by_label:
                continue
            cands = pool.by_label[label]
            chosen = next((m for m in cands if m.pair.pair_id == pair_id), cands[0])
            break
        if chosen is None:
            free = [lab for lab in pool.labels if lab not in used]
            if not free:
                raise ValueError(f"the demo needs {len(roles)} objects of different classes; the pool has "
                                 f"only {len(pool.labels)}: {pool.labels}")
            chosen = pool.by_label[free[int(rng.integers(0, len(free)))]][0]
        used.add(chosen.pair.label)
        out.append(chosen)
    return out


def sounding_envelope(intervals: Sequence[tuple[float, float]], n: int, sample_rate: int, fade_s: float = 0.010) -> np.ndarray:
    """Gain (float64, ``n`` samples): 1 inside ``intervals``, 0 outside, with raised-cosine
    fades of ``fade_s`` inside each interval at its onset and offset.

    >>> env = sounding_envelope([(0.5, 1.0)], 2000, 1000, fade_s=0.01)
    >>> float(env[499]), float(env[750]), float(env[1000]), float(env[505]) < 1.0
    (0.0, 1.0, 0.0, True)
    """
    env = np.zeros(int(n), np.float64)
    f = max(1, int(round(fade_s * sample_rate)))
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(f) + 0.5) / f)
    for a, b in intervals:
        i0 = max(0, int(round(a * sample_rate)))
        i1 = min(int(n), int(round(b * sample_rate)))
        if i1 - i0 < 2 * f:
            raise ValueError(f"sounding interval ({a}, {b}) s is shorter than its two {fade_s * 1e3:g}-ms fades")
        env[i0:i1] = 1.0
        env[i0 : i0 + f] = ramp
        env[i1 - f : i1] = ramp[::-1]
    return env


def _check_roles(cfg: DemoConfig) -> None:
    if not cfg.roles:
        raise ValueError("DemoConfig.roles is empty")
    for k, role in enumerate(cfg.roles):
        last = 0.0
        for a, b in role.intervals:
            if not (last <= a < b <= cfg.duration):
                raise ValueError(f"role {k}: intervals must be sorted, disjoint and inside [0, {cfg.duration}] s, "
                                 f"got {list(role.intervals)}")
            last = b
    if not any(r.intervals for r in cfg.roles):
        raise ValueError("no role ever sounds")


def _pick_background(backgrounds: Sequence[Background], preferred: str, rng: np.random.Generator) -> Background:
    for b in backgrounds:
        if b.bg_id == preferred:
            return b
    return backgrounds[int(rng.integers(0, len(backgrounds)))]


def compose_demo(pool: PairPool, backgrounds: Sequence[Background], *, seed: int = 0,
                 config: DemoConfig | None = None, keep_alpha: bool = False) -> DemoClip:
    """Compose the demo clip from any pair pool and backgrounds (pure, deterministic).

    ``keep_alpha`` keeps each object's full-canvas layer alpha in :attr:`DemoObject.alpha`.

    >>> from training.data.avpairs import generated_backgrounds
    >>> rgba = np.zeros((60, 40, 4), np.uint8); rgba[..., 0] = 200; rgba[..., 3] = 255
    >>> def pair(i):
    ...     p = AVPair(f"p{i}", f"class{i}", "demo", "", "", "", "", "user", "user", "CC0-1.0")
    ...     tone = (0.2 * np.sin(np.arange(8000) * (0.05 + 0.02 * i))).astype(np.float32)
    ...     return ObjectMedia(p, rgba, tone)
    >>> pool = PairPool([pair(i) for i in range(3)], 8000)
    >>> clip = compose_demo(pool, generated_backgrounds(1, size=(120, 160)))
    >>> clip.image.shape, clip.num_frames, [s["sounding"] for s in clip.segments()]
    ((480, 640, 3), 225, [[0], [0, 1], [1], [], [0]])
    >>> bool(np.all(clip.mixture[int(9 * 8000) : int(11 * 8000)] == 0))
    True
    """
    cfg = config or DemoConfig()
    if not backgrounds:
        raise ValueError("compose_demo: no backgrounds")
    _check_roles(cfg)
    if cfg.fps <= 0 or cfg.duration <= 0:
        raise ValueError(f"fps and duration must be > 0, got {cfg.fps}, {cfg.duration}")
    rng = _demo_rng(seed)
    chosen = choose_demo_pairs(pool, cfg.roles, rng)
    H, W = cfg.size
    bg = _pick_background(backgrounds, cfg.background, rng)
    canvas, bg_meta = crop_background(bg, H, W, rng, cfg.background_scale)
    bg_meta = {**bg_meta, "ref": bg.ref, "license": bg.license}

    # one object per vertical slot of the width, slots assigned in a seeded order: no overlap
    n = len(chosen)
    slot_w = W // n
    slots = [int(s) for s in rng.permutation(n)]
    layers, placements = [], []
    for k, m in enumerate(chosen):
        h0, w0 = m.rgba.shape[:2]
        longer = float(rng.uniform(*cfg.object_scale)) * min(H, W)
        s = min(longer / max(h0, w0), cfg.max_upscale, (slot_w - 2 * cfg.slot_margin) / w0, (H - 2 * cfg.slot_margin) / h0)
        w, h = max(1, int(round(w0 * s))), max(1, int(round(h0 * s)))
        pre, a = resize_rgba_premultiplied(m.rgba, w, h)
        x_lo = slots[k] * slot_w + cfg.slot_margin
        x = int(rng.integers(x_lo, x_lo + max(0, slot_w - 2 * cfg.slot_margin - w) + 1))
        y_lo = min(H // 4, H - h - cfg.slot_margin)  # objects stand in the lower three quarters
        y = int(rng.integers(y_lo, H - h - cfg.slot_margin + 1))
        layers.append((pre, a, x, y))
        placements.append((x, y, w, h))
    image, alphas, weights = composite(canvas, layers)

    objects = []
    for k, (m, role) in enumerate(zip(chosen, cfg.roles)):
        mask = weights[k] > 0.5
        if not mask.any():
            raise ValueError(f"demo object {m.pair.pair_id} has no visible pixel")
        objects.append(DemoObject(
            index=k, pair=m.pair, mask=mask, box=mask_box(mask), placement=placements[k],
            intervals=tuple((float(a), float(b)) for a, b in role.intervals),
            alpha=alphas[k] if keep_alpha else None,
        ))

    # audio: continuous level-matched stems, gated by the timeline, on the 16-bit grid
    sr = pool.sample_rate
    n_samples = int(round(cfg.duration * sr))
    stems, gains = [], []
    for o, m in zip(objects, chosen):
        if not o.sounding:
            continue
        stem, off, looped = make_stem(m.sound, n_samples, rng)
        stem, gain = level_match(stem, cfg.target_rms_dbfs, 0.0, rng)
        stem = stem.astype(np.float64) * sounding_envelope(o.intervals, n_samples, sr, cfg.fade_s)
        o.stem_index, o.sound_offset, o.looped = len(stems), off, looped
        stems.append(stem)
        gains.append(gain)
    stacked = np.stack(stems)
    headroom = 1.0
    peak = float(np.abs(stacked.sum(axis=0)).max())
    if peak > cfg.max_peak:
        headroom = cfg.max_peak / peak
        stacked = stacked * headroom
    q = np.clip(np.round(stacked * 32768.0), -32768, 32767)
    stacked = (q / 32768.0).astype(np.float32)
    for o in objects:
        if o.stem_index is not None:
            o.gain = gains[o.stem_index] * headroom
    mixture = mix_waveform_sum(list(stacked))
    return DemoClip(
        seed=int(seed), config=cfg, image=image, background=np.ascontiguousarray(canvas), background_meta=bg_meta,
        objects=objects, stems=stacked, mixture=np.ascontiguousarray(mixture, np.float32), sample_rate=sr,
        headroom_gain=headroom,
    )


def _r(v: float, nd: int = 6) -> float:
    return float(round(float(v), nd))


def demo_annotation(clip: DemoClip, *, sources: Sequence[dict] = (), background_facts: dict | None = None,
                    files: dict[str, str] | None = None, encoding: dict | None = None) -> dict:
    """The JSON description of ``clip`` (pure; :func:`write_demo` adds the file hashes)."""
    cfg = clip.config
    H, W = cfg.size
    objs = []
    for o in clip.objects:
        x1, y1, x2, y2 = o.box
        p = o.pair
        objs.append({
            "id": o.index,
            "mask_value": o.index + 1,
            "label": p.label,
            "category": p.category,
            "pair_id": p.pair_id,
            "image_source": p.image_ref,
            "sound_source": p.sound_ref if o.sounding else None,
            "source": p.source,
            "association": p.association,
            "license": p.license,
            "sounding": o.sounding,
            "sounding_intervals_s": [[_r(a), _r(b)] for a, b in o.intervals],
            "box_xyxy": [x1, y1, x2, y2],
            "box_xyxy_norm": [_r(x1 / W), _r(y1 / H), _r(x2 / W), _r(y2 / H)],
            "area": o.area,
            "placement_xywh": list(o.placement),
            "stem_index": o.stem_index,
            "gain": None if o.gain is None else _r(o.gain, 8),
            "sound_offset": o.sound_offset,
            "looped": o.looped,
        })
    licenses = sorted({o.pair.license for o in clip.objects} | ({clip.background_meta["license"]} - {""}))
    return {
        "format": DEMO_FORMAT,
        "builder_version": BUILDER_VERSION,
        "seed": clip.seed,
        "fps": cfg.fps,
        "width": W,
        "height": H,
        "num_frames": clip.num_frames,
        "static_picture": True,
        "sample_rate": clip.sample_rate,
        "num_samples": clip.num_samples,
        "channels": 1,
        "duration_s": cfg.duration,
        "fade_s": cfg.fade_s,
        "target_rms_dbfs": cfg.target_rms_dbfs,
        "headroom_gain": _r(clip.headroom_gain, 8),
        "files": dict(files or DEMO_FILES),
        "encoding": encoding or {},
        "background": dict(clip.background_meta),
        "objects": objs,
        "timeline": clip.segments(),
        "licenses": licenses,
        "sources": list(sources),
        "background_sources": background_facts or {},
        "config": cfg.as_dict(),
        "composition_sha256": clip.composition_sha256(),
    }


# --------------------------------------------------------------------------------------------
# writing


def _encode_mp4(clip: DemoClip, path: Path, *, crf: int, audio_bitrate: int) -> dict:
    import av

    cfg = clip.config
    H, W = cfg.size
    tmp = path.with_name(path.name + ".tmp")
    # bitexact: no library version strings in the file, so rebuilds compare byte for byte
    container = av.open(str(tmp), mode="w", format="mp4", options={"fflags": "+bitexact"})
    try:
        vs = container.add_stream("libx264", rate=Fraction(cfg.fps))
        vs.width, vs.height, vs.pix_fmt = W + W % 2, H + H % 2, "yuv420p"
        vs.options = {"crf": str(crf), "preset": "medium", "threads": "1", "flags": "+bitexact",
                      "x264-params": f"keyint={5 * cfg.fps}:min-keyint={cfg.fps}:scenecut=0"}
        as_ = container.add_stream("aac", rate=clip.sample_rate)
        as_.layout = "mono"
        as_.bit_rate = int(audio_bitrate)
        as_.options = {"flags": "+bitexact"}
        as_.codec_context.open()  # for its frame size
        fsize = as_.codec_context.frame_size or 1024
        bgr = np.ascontiguousarray(clip.image[..., ::-1])
        if bgr.shape[:2] != (vs.height, vs.width):
            import cv2

            bgr = cv2.copyMakeBorder(bgr, 0, H % 2, 0, W % 2, cv2.BORDER_REPLICATE)
        x = clip.mixture
        n_audio = -(-len(x) // fsize)
        vi = ai = 0
        # interleave in time order
        while vi < clip.num_frames or ai < n_audio:
            t_v = vi / cfg.fps if vi < clip.num_frames else math.inf
            t_a = ai * fsize / clip.sample_rate if ai < n_audio else math.inf
            if t_v <= t_a:
                fr = av.VideoFrame.from_ndarray(bgr, format="bgr24")
                fr.pts = vi
                fr.time_base = Fraction(1, cfg.fps)
                container.mux(vs.encode(fr))
                vi += 1
            else:
                chunk = x[ai * fsize : (ai + 1) * fsize]
                if len(chunk) < fsize:
                    chunk = np.concatenate([chunk, np.zeros(fsize - len(chunk), np.float32)])
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk, np.float32)[None, :], format="fltp", layout="mono")
                fr.sample_rate = clip.sample_rate
                fr.pts = ai * fsize
                fr.time_base = Fraction(1, clip.sample_rate)
                container.mux(as_.encode(fr))
                ai += 1
        container.mux(vs.encode(None))
        container.mux(as_.encode(None))
    except BaseException:
        container.close()
        tmp.unlink(missing_ok=True)
        raise
    container.close()
    os.replace(tmp, path)
    return {
        "container": "mp4",
        "video_codec": "h264 (libx264)",
        "pix_fmt": "yuv420p",
        "crf": int(crf),
        "audio_codec": "aac",
        "audio_bitrate": int(audio_bitrate),
        "pyav": av.__version__,
    }


def write_demo(clip: DemoClip, out: str | os.PathLike, *, sources: Sequence[dict] = (),
               background_facts: dict | None = None, crf: int = 20, audio_bitrate: int = 64000) -> dict[str, Path]:
    """Write ``demo_clip.mp4`` (H.264 yuv420p + AAC, mono), ``demo_clip.mask.png`` (uint8
    label map: 0 background, ``k + 1`` object ``k``) and ``demo_clip.json`` into ``out``
    (created; existing demo files are replaced). Returns key → path of :data:`DEMO_FILES`."""
    import cv2

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / name for k, name in DEMO_FILES.items()}
    encoding = _encode_mp4(clip, paths["video"], crf=crf, audio_bitrate=audio_bitrate)
    if not cv2.imwrite(str(paths["mask"]), clip.label_map(), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"cannot write {paths['mask']}")
    ann = demo_annotation(clip, sources=sources, background_facts=background_facts, encoding=encoding)
    ann["files_sha256"] = {k: hashlib.sha256(paths[k].read_bytes()).hexdigest() for k in ("video", "mask")}
    ann["files_bytes"] = {k: paths[k].stat().st_size for k in ("video", "mask")}
    paths["annotation"].write_text(json.dumps(ann, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths
