"""The ``avpairs`` benchmark on disk: builder and reader.

One build = one protocol × one split × a range of scene indices, written to one folder::

    OUT/index.json              what was built and from what (see below)
    OUT/scenes/000042.png       the picture, RGB (``.jpg`` with image_format="jpg", quality 95)
    OUT/scenes/000042.mask.png  uint8 label map: 0 = no object, k + 1 = object k's visible mask
    OUT/scenes/000042.wav       the mixture, mono 16-bit PCM WAV at ``sample_rate`` (``.flac`` with
                                audio_format="flac": same samples, lossless, about half the size)
    OUT/scenes/000042.stem0.wav one mono 16-bit WAV per sounding object (``stem`` in the JSON)
    OUT/scenes/000042.json      the annotation

Visible masks never overlap (see :mod:`training.data.avpairs`), so one label map holds them all.
Stems are on the 16-bit grid, so the mixture file is exactly the sum of the stem files (as
int16 samples, and as floats read back with soundfile's 1/32768 scaling); the mixture's peak is
kept ≤ 0.99, nothing is clipped. 16-bit PCM WAV is what the official loaders read (NoPrior uses
``scipy.io.wavfile``).

Scene JSON (``format: streamloc-avpairs-scene/1``): ``scene``, ``protocol``, ``split``,
``index``, ``scene_id`` (= split base + index), ``seed``, ``width``, ``height``, file names
(``image``, ``mask``, ``mixture``), ``sample_rate``, ``num_samples``, ``tiles`` (x, y, w, h),
``backgrounds`` (id and crop of each background used), ``headroom_gain`` and ``objects``, each
with ``id``, ``mask_value`` (= id + 1), ``label``, ``category``, ``sounding``, ``pair_id``,
``image_source`` / ``sound_source`` (``PACKAGE:path`` or folder-relative), ``license``,
``box_xyxy`` (pixels, half-open: columns x1..x2-1, rows y1..y2-1), ``box_xyxy_norm`` (divided by
width / height), ``area`` (mask pixels), ``visible_fraction``, ``placement_xywh`` (the pasted
rectangle), ``paste_order`` (later pastes occlude earlier ones), ``tile``, and for sounding
objects ``stem``, ``gain`` (linear, applied to the resampled source), ``sound_offset`` (first
source sample; the phase of the loop) and ``looped``.

``index.json`` (``format: streamloc-avpairs/1``): ``builder_version``, ``protocol``, ``split``,
``seed``, ``first_index``, ``count``, ``sample_rate``, ``duration_s``, ``image_format``, ``audio_format``,
``config`` (every :class:`~training.data.avpairs.SceneConfig` field), ``sources`` (packages with
version, SHA-256 and licence, or the user folder), ``backgrounds``, ``licenses`` (the distinct
licences of the media used), ``pairs`` (kept / dropped counts and the kept pair list),
``classes``, ``split_classes``, ``openset`` (heard / unheard labels), ``stats`` and ``files``
(SHA-256 of every file under ``scenes/``, so two builds can be compared by their index).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from streamloc.errors import StreamlocError
from streamloc.hashing import file_sha256
from training.data.avpairs import (
    BUILDER_VERSION,
    PROTOCOLS,
    SPLITS,
    Background,
    PairPool,
    Scene,
    SceneConfig,
    compose_scene,
    openset_partition,
    split_labels,
)
from training.data.avpairs_fetch import _bar

__all__ = [
    "SCENE_FORMAT",
    "INDEX_FORMAT",
    "scene_name",
    "scene_annotation",
    "write_scene",
    "build_dataset",
    "read_index",
    "read_scene",
]

SCENE_FORMAT = "streamloc-avpairs-scene/1"
INDEX_FORMAT = "streamloc-avpairs/1"


def scene_name(index: int) -> str:
    return f"{int(index):06d}"


def _r(v: float, nd: int = 6) -> float:
    return float(round(float(v), nd))


def scene_annotation(scene: Scene, name: str, image_file: str, licenses: dict[str, str] | None = None,
                     refs: dict[str, tuple[str, str]] | None = None, audio_ext: str = ".wav") -> dict:
    """The JSON annotation of ``scene`` (file names relative to the scene folder)."""
    W, H = scene.width, scene.height
    objs = []
    for o in scene.objects:
        x1, y1, x2, y2 = o.box
        img_ref, snd_ref = (refs or {}).get(o.pair_id, ("", ""))
        d = {
            "id": o.index,
            "mask_value": o.index + 1,
            "label": o.label,
            "category": o.category,
            "sounding": bool(o.sounding),
            "pair_id": o.pair_id,
            "image_source": img_ref,
            "sound_source": snd_ref,
            "license": (licenses or {}).get(o.pair_id, ""),
            "box_xyxy": [x1, y1, x2, y2],
            "box_xyxy_norm": [_r(x1 / W), _r(y1 / H), _r(x2 / W), _r(y2 / H)],
            "area": o.area,
            "visible_fraction": _r(o.visible_fraction, 4),
            "placement_xywh": list(o.placement),
            "paste_order": o.paste_order,
            "tile": o.tile,
            "stem": None,
            "gain": None,
            "sound_offset": None,
            "looped": None,
        }
        if o.sounding:
            d.update(
                stem=f"{name}.stem{o.stem_index}{audio_ext}",
                gain=_r(o.gain, 8),
                sound_offset=o.sound_offset,
                looped=bool(o.looped),
            )
        objs.append(d)
    return {
        "format": SCENE_FORMAT,
        "scene": name,
        "protocol": scene.protocol,
        "split": scene.split,
        "index": scene.index,
        "scene_id": scene.scene_id,
        "seed": scene.seed,
        "width": W,
        "height": H,
        "image": image_file,
        "mask": f"{name}.mask.png",
        "mixture": f"{name}{audio_ext}",
        "sample_rate": scene.sample_rate,
        "num_samples": int(len(scene.mixture)),
        "num_sounding": int(sum(o.sounding for o in scene.objects)),
        "tiles": [list(t) for t in scene.tiles],
        "backgrounds": scene.backgrounds,
        "headroom_gain": _r(scene.headroom_gain, 8),
        "objects": objs,
    }


def _to_int16(x: np.ndarray, what: str) -> np.ndarray:
    """Samples on the 16-bit grid (as :func:`compose_scene` makes them) → int16, exactly."""
    q = np.asarray(x, np.float64) * 32768.0
    r = np.round(q)
    if not np.array_equal(q, r) or r.min(initial=0) < -32768 or r.max(initial=0) > 32767:
        raise ValueError(f"{what}: samples are not on the 16-bit grid")
    return r.astype(np.int16)


def write_scene(scene: Scene, folder: Path, *, image_format: str = "png", audio_format: str = "wav",
                licenses: dict | None = None, refs: dict | None = None) -> list[Path]:
    """Write one scene's files into ``folder``; returns the paths written."""
    import cv2
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    name = scene_name(scene.index)
    ext = {"png": ".png", "jpg": ".jpg"}.get(image_format)
    if ext is None:
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    paths = []
    img_path = folder / f"{name}{ext}"
    bgr = np.ascontiguousarray(scene.image[..., ::-1])
    params = [cv2.IMWRITE_PNG_COMPRESSION, 6] if ext == ".png" else [cv2.IMWRITE_JPEG_QUALITY, 95]
    if not cv2.imwrite(str(img_path), bgr, params):
        raise StreamlocError(f"cannot write {img_path}")
    paths.append(img_path)
    mask_path = folder / f"{name}.mask.png"
    if not cv2.imwrite(str(mask_path), scene.label_map(), [cv2.IMWRITE_PNG_COMPRESSION, 6]):
        raise StreamlocError(f"cannot write {mask_path}")
    paths.append(mask_path)
    aext = {"wav": ".wav", "flac": ".flac"}.get(audio_format)
    if aext is None:
        raise ValueError(f"audio_format must be 'wav' or 'flac', got {audio_format!r}")
    mix_path = folder / f"{name}{aext}"
    sf.write(str(mix_path), _to_int16(scene.mixture, "mixture"), scene.sample_rate, subtype="PCM_16")
    paths.append(mix_path)
    for k, stem in enumerate(scene.stems):
        p = folder / f"{name}.stem{k}{aext}"
        sf.write(str(p), _to_int16(stem, f"stem {k}"), scene.sample_rate, subtype="PCM_16")
        paths.append(p)
    ann = scene_annotation(scene, name, img_path.name, licenses, refs, audio_ext=aext)
    js = folder / f"{name}.json"
    js.write_text(json.dumps(ann, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    paths.append(js)
    return paths


def build_dataset(
    out: str | os.PathLike,
    pool: PairPool,
    backgrounds: Sequence[Background],
    *,
    protocol: str,
    split: str,
    count: int,
    seed: int = 0,
    first_index: int = 0,
    config: SceneConfig | None = None,
    image_format: str = "png",
    audio_format: str = "wav",
    sources: Sequence[dict] = (),
    background_facts: dict | None = None,
    pair_report: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Compose scenes ``first_index … first_index + count − 1`` of ``split`` and write them.

    Refuses a non-empty ``out`` unless ``overwrite`` (which deletes ``out/scenes`` and
    ``out/index.json`` first). Returns the path of ``index.json``.
    """
    cfg = config or SceneConfig()
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    out = Path(out)
    scenes_dir = out / "scenes"
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise StreamlocError(f"{out} is not empty: choose another --out or pass --overwrite")
        if scenes_dir.exists():
            shutil.rmtree(scenes_dir)
        (out / "index.json").unlink(missing_ok=True)
    scenes_dir.mkdir(parents=True, exist_ok=True)

    licenses = {m.pair.pair_id: m.pair.license for m in pool.items}
    refs = {m.pair.pair_id: (m.pair.image_ref, m.pair.sound_ref) for m in pool.items}
    names, files = [], {}
    snd_count: Counter = Counter()
    sil_count: Counter = Counter()
    pairs_used: Counter = Counter()
    bar = _bar(progress, total=count, desc=f"build {protocol}/{split}", unit="scene")
    for i in range(first_index, first_index + count):
        scene = compose_scene(pool, backgrounds, protocol, seed=seed, split=split, index=i, config=cfg)
        for p in write_scene(scene, scenes_dir, image_format=image_format, audio_format=audio_format, licenses=licenses, refs=refs):
            files[f"scenes/{p.name}"] = file_sha256(p)
        for o in scene.objects:
            (snd_count if o.sounding else sil_count)[o.label] += 1
            pairs_used[o.pair_id] += 1
        names.append(scene_name(i))
        bar.update(1)
    bar.close()

    heard, unheard = openset_partition(pool.category_of, cfg.openset_seed)
    used_licenses = sorted({licenses[p] for p in pairs_used} | {b.license for b in backgrounds if b.license})
    index = {
        "format": INDEX_FORMAT,
        "builder_version": BUILDER_VERSION,
        "protocol": protocol,
        "split": split,
        "seed": int(seed),
        "first_index": int(first_index),
        "count": int(count),
        "sample_rate": pool.sample_rate,
        "duration_s": cfg.duration,
        "image_format": image_format,
        "audio_format": audio_format,
        "config": cfg.as_dict(),
        "sources": list(sources),
        "backgrounds": background_facts or {"ids": [b.bg_id for b in backgrounds]},
        "licenses": used_licenses,
        "pairs": pair_report or {"kept": len(pool), "kept_pairs": sorted(licenses)},
        "classes": [{"label": lab, "category": pool.category_of[lab], "pairs": len(pool.by_label[lab])} for lab in pool.labels],
        "split_classes": split_labels(pool, split, cfg.openset_seed),
        "openset": {"seed": cfg.openset_seed, "heard": heard, "unheard": unheard},
        "stats": {
            "sounding_per_label": dict(sorted(snd_count.items())),
            "silent_per_label": dict(sorted(sil_count.items())),
            "pairs_used": len(pairs_used),
        },
        "scenes": names,
        "files": dict(sorted(files.items())),
    }
    path = out / "index.json"
    path.write_text(json.dumps(index, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_index(out: str | os.PathLike) -> dict:
    p = Path(out) / "index.json"
    if not p.is_file():
        raise FileNotFoundError(f"no avpairs index at {p}")
    d = json.loads(p.read_text(encoding="utf-8"))
    if d.get("format") != INDEX_FORMAT:
        raise StreamlocError(f"{p}: not an avpairs index (format {d.get('format')!r}, expected {INDEX_FORMAT!r})")
    return d


def read_scene(out: str | os.PathLike, name: str | int) -> dict:
    """One scene back from disk: ``annotation`` (dict), ``image`` (RGB uint8), ``masks`` (bool
    (n_objects, H, W), object order), ``mixture`` and ``stems`` (float32), ``sample_rate``."""
    import cv2
    import soundfile as sf

    folder = Path(out) / "scenes"
    name = scene_name(name) if isinstance(name, int) else name
    ann = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    img = cv2.imread(str(folder / ann["image"]), cv2.IMREAD_COLOR)
    lab = cv2.imread(str(folder / ann["mask"]), cv2.IMREAD_UNCHANGED)
    if img is None or lab is None:
        raise StreamlocError(f"{folder}: cannot read the picture or mask of scene {name}")
    masks = np.stack([lab == o["mask_value"] for o in ann["objects"]]) if ann["objects"] else np.zeros((0,) + lab.shape, bool)
    mix, sr = sf.read(str(folder / ann["mixture"]), dtype="float32")
    sounding = sorted((o for o in ann["objects"] if o["sounding"]), key=lambda o: int(o["stem"].rsplit("stem", 1)[1].split(".")[0]))
    stems = [sf.read(str(folder / o["stem"]), dtype="float32")[0] for o in sounding]
    return {
        "annotation": ann,
        "image": np.ascontiguousarray(img[..., ::-1]),
        "masks": masks,
        "mixture": mix,
        "stems": np.stack(stems) if stems else np.zeros((0, len(mix)), np.float32),
        "sample_rate": int(sr),
    }
