"""Where the ``avpairs`` objects, sounds and backgrounds come from (file I/O lives here).

Sources
-------
* **Tux Paint stamps** (``tuxpaint-stamps-default``, unpacked by
  :mod:`training.data.avpairs_fetch`): ``usr/share/tuxpaint/stamps/**/NAME.png|svg`` (alpha
  cut-outs) with ``NAME.ogg`` (the stamp's sound effect). Files ``NAME_desc*.ogg`` and
  language-suffixed ``NAME_xx[_YY].ogg`` are spoken descriptions, not object sounds, and are
  skipped. Each remaining (image, sound) is joined with the hand-made catalog in
  ``training/data/catalog/tuxpaint/`` (label, category, association, known defects); a stamp
  the catalog does not list (letters, digits, road signs, dreidels, faces: speech) is skipped.
* **Class images**: catalog images without a sound of their own (``tpx__*`` rows, e.g. a second
  lion picture) are paired with every kept sound of the same label (association ``class``).
* **FluidR3 instruments** (``fluid-soundfont-gm``): short phrases of General-MIDI instruments
  whose picture is among the stamps (violin, cello, bassoon, trumpet, guitar, electric guitar,
  cymbal, floor tom, drum kit) are rendered once with the ``fluidsynth`` command-line program
  (a *build-time* tool: Debian package ``fluidsynth``; no reverb, no chorus) from tiny MIDI files
  written here, cached, and paired with every picture of that instrument.
* **Backgrounds**: ten photographs of ``plasma-workspace-wallpapers`` (see
  :data:`WALLPAPERS`), or a folder of pictures, or generated gradients.
* **A user's own folder**: ``NAME.png`` (with alpha) + ``NAME.wav|ogg|flac`` side by side; files
  directly in the folder take their label from ``NAME``, files in a sub-folder take the
  sub-folder's name as label (``dog/dog1.png`` + ``dog/dog1.wav``).

Kept and dropped
----------------
A catalog pair is kept when its association is ``direct`` (``uncertain`` too with
``include_uncertain``), the catalog marks it usable (no ``indirect`` sound, ``silent-sound``,
``dup-sound`` or ``tiny-image``), and the measured checks of :func:`load_pool` pass: the source
rate is at least ``min_source_rate`` (default 16 kHz: the 8/11 kHz clips would be told apart by
their missing high band alone), the alpha box's longer side is at least ``min_image_side``
(64 px), the sound is not digital silence, and no other sound file decodes to the same samples.
SVG-only stamps need ``rsvg-convert`` (Debian ``librsvg2-bin``, build time). Every drop is listed
with its reasons in the :class:`PairReport`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from streamloc.errors import StreamlocError
from training.data.audio import decode_audio, resample
from training.data.avpairs import AVPair, Background, ObjectMedia, PairPool, crop_to_alpha, trim_silence
from training.data.avpairs_fetch import PACKAGES, derived_cache_dir, require_unpacked, _bar

__all__ = [
    "CATALOG_DIR",
    "STAMPS_SUBDIR",
    "WALLPAPERS",
    "INSTRUMENTS",
    "PairFolderError",
    "Dropped",
    "PairSelection",
    "PairReport",
    "read_catalog",
    "tuxpaint_pairs",
    "user_folder_pairs",
    "load_pool",
    "load_rgba",
    "load_wallpapers",
    "load_background_folder",
    "render_instruments",
    "write_midi",
    "rasterize_svg",
]

CATALOG_DIR = Path(__file__).resolve().parent / "catalog" / "tuxpaint"
STAMPS_SUBDIR = "usr/share/tuxpaint/stamps"
TUX = "tuxpaint-stamps-default"
FLUID = "fluid-soundfont-gm"
WALLS = "plasma-workspace-wallpapers"
SF2_SUBPATH = "usr/share/sounds/sf2/FluidR3_GM.sf2"
IMAGE_EXTS = (".png",)
SOUND_EXTS = (".wav", ".ogg", ".flac")
TUX_LICENSE = "GPL-2.0-or-later (Tux Paint stamps, Bill Kendrick et al.)"
FLUID_LICENSE = "image: GPL-2.0-or-later (Tux Paint stamps); sound: MIT (FluidR3 GM soundfont, Frank Wen), rendered with FluidSynth"

#: The photographic wallpapers used as backgrounds: (folder, file, author, licence from the
#: wallpaper's own metadata.json). ColorfulCups is left out on purpose (its cups look like the
#: ``glass`` class); the other wallpapers of the package are drawings or renders.
WALLPAPERS: tuple[tuple[str, str, str, str], ...] = (
    ("BytheWater", "2560x1600.jpg", "Maciej Wiklo", "LGPL-3.0"),
    ("ColdRipple", "2560x1600.jpg", "Risto Saukonpää", "LGPL-3.0"),
    ("DarkestHour", "2560x1600.jpg", "Risto Saukonpää", "LGPL-3.0"),
    ("EveningGlow", "2560x1600.jpg", "Ian Hex", "LGPL-3.0"),
    ("FallenLeaf", "2560x1600.jpg", "Martin Klapetek", "LGPL-3.0"),
    ("Grey", "2560x1600.jpg", "Sigi Sagi", "LGPL-3.0"),
    ("Kite", "2560x1600.jpg", "Risto Saukonpää", "LGPL-3.0"),
    ("OneStandsOut", "2560x1600.jpg", "Risto Saukonpää", "LGPL-3.0"),
    ("Path", "2560x1600.jpg", "Risto Saukonpää", "LGPL-3.0"),
    ("summer_1am", "2560x1600.jpg", "Risto Saukonpää", "LGPL-3.0"),
)

# (label, GM program 0-based or None for the percussion channel, phrases).
# A phrase is a list of (start s, length s, MIDI key, velocity).
def _melody(base: int, steps: Sequence[int], starts: Sequence[float], lengths: Sequence[float]) -> list:
    return [(s, l, base + k, 100) for k, s, l in zip(steps, starts, lengths)]


_ARP = ([0, 4, 7, 12, 7, 4], [0, 0.5, 1, 1.5, 2, 2.5], [0.45] * 6)
_TUNE = ([0, 7, 5, 4, 2, 0], [0, 0.75, 1, 1.5, 2, 2.5], [0.7, 0.22, 0.45, 0.45, 0.45, 0.45])


def _melodic(base: int) -> list[list]:
    return [_melody(base, *_ARP), _melody(base, *_TUNE)]


INSTRUMENTS: tuple[tuple[str, int | None, list[list]], ...] = (
    ("violin", 40, _melodic(67)),
    ("cello", 42, _melodic(48)),
    ("bassoon", 70, _melodic(50)),
    ("trumpet", 56, _melodic(62)),
    ("guitar", 24, _melodic(52)),
    ("electric_guitar", 27, _melodic(57)),
    ("cymbal", None, [[(0, 1.4, 49, 110), (1.5, 1.4, 49, 110)], [(0, 0.7, 49, 110), (0.75, 1.2, 57, 110), (2.0, 0.9, 49, 110)]]),
    ("tom_drum", None, [[(0.5 * i, 0.4, 41, 110) for i in range(6)], [(t, 0.3, k, 110) for t, k in ((0, 43), (0.375, 41), (0.75, 43), (1.5, 41), (1.875, 43), (2.25, 41))]]),
    (
        "drum_kit",
        None,
        [
            [(t, 0.2, 36, 115) for t in (0, 1, 2)] + [(t, 0.2, 38, 110) for t in (0.5, 1.5, 2.5)] + [(0.25 * i, 0.1, 42, 90) for i in range(12)],
            [(t, 0.2, 36, 115) for t in (0, 0.75, 1.5, 2.25)] + [(t, 0.2, 38, 110) for t in (0.5, 1.25, 2.0, 2.75)] + [(0.5 * i, 0.3, 46, 90) for i in range(6)],
        ],
    ),
)


class PairFolderError(StreamlocError, ValueError):
    """A pair folder that does not have the documented layout; lists every problem found."""

    def __init__(self, folder: str | os.PathLike, problems: Sequence[str]) -> None:
        self.folder = str(folder)
        self.problems = list(problems)
        lines = "\n  - ".join(self.problems)
        super().__init__(
            f"{self.folder}: not a valid folder of (image, sound) pairs "
            f"(expected NAME.png with an alpha channel next to NAME.wav|ogg|flac):\n  - {lines}"
        )


@dataclass(frozen=True)
class Dropped:
    pair_id: str
    label: str
    reasons: tuple[str, ...]
    detail: str = ""

    def as_dict(self) -> dict:
        return {"pair_id": self.pair_id, "label": self.label, "reasons": list(self.reasons), "detail": self.detail}


@dataclass
class PairSelection:
    """Candidate pairs (before the measured checks), what was dropped, and where they came from."""

    pairs: list[AVPair]
    dropped: list[Dropped] = field(default_factory=list)
    skipped_files: Counter = field(default_factory=Counter)
    sources: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class PairReport:
    kept: list[AVPair]
    dropped: list[Dropped]
    skipped_files: dict[str, int]
    sources: list[dict]
    notes: list[str]
    sample_rate: int

    def reason_counts(self) -> dict[str, int]:
        c: Counter = Counter()
        for d in self.dropped:
            c.update(d.reasons)
        return dict(sorted(c.items()))

    def kept_by_source(self) -> dict[str, int]:
        return dict(sorted(Counter(p.source + "/" + p.association for p in self.kept).items()))

    def labels(self) -> list[str]:
        return sorted({p.label for p in self.kept})

    def as_dict(self) -> dict:
        return {
            "sample_rate": self.sample_rate,
            "kept": len(self.kept),
            "kept_by_source": self.kept_by_source(),
            "classes": len(self.labels()),
            "dropped": len(self.dropped),
            "dropped_by_reason": self.reason_counts(),
            "skipped_files": dict(sorted(self.skipped_files.items())),
            "notes": list(self.notes),
            "sources": list(self.sources),
            "kept_pairs": [p.as_dict() for p in self.kept],
            "dropped_pairs": [d.as_dict() for d in self.dropped],
        }


# --------------------------------------------------------------------------------------------
# catalog


def read_catalog(catalog_dir: Path = CATALOG_DIR) -> tuple[list[dict], dict[str, dict], dict[str, dict]]:
    """(pairs rows, sounds by id, images by id) of the Tux Paint catalog."""
    def rows(name: str) -> list[dict]:
        p = Path(catalog_dir) / name
        if not p.is_file():
            raise FileNotFoundError(f"catalog file missing: {p}")
        with open(p, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    pairs = rows("pairs.csv")
    sounds = {r["id"]: r for r in rows("sounds.csv")}
    images = {r["id"]: r for r in rows("images.csv")}
    return pairs, sounds, images


def _in_stamps(src_path: str) -> str:
    """Catalog ``src_path`` (``tuxpaint/usr/share/tuxpaint/stamps/x/y.png``) → ``x/y.png``."""
    marker = "stamps/"
    i = src_path.find(marker)
    if i < 0:
        raise ValueError(f"catalog path outside the stamps tree: {src_path}")
    return src_path[i + len(marker) :]


_LANG = re.compile(r"[a-z]{2,3}(?:_[A-Za-z]{2})?")


def _language_base(stem: str, images: set[str]) -> str | None:
    """``stem`` minus a language suffix (``_fr``, ``_en_GB``, ``_zh_tw``) when that names a picture."""
    name_start = stem.rfind("/") + 1
    for i in range(name_start, len(stem)):
        if stem[i] == "_" and _LANG.fullmatch(stem[i + 1 :]) and stem[:i] in images:
            return stem[:i]
    return None


def _scan_stamps(stamps: Path) -> tuple[dict[str, str], Counter, list[str]]:
    """Plain object sounds with a picture (stem → relative ogg path), skipped-file counts,
    and stems with a sound and a picture."""
    images: set[str] = set()
    oggs: list[str] = []
    for dirpath, _, files in os.walk(stamps):
        rel_dir = os.path.relpath(dirpath, stamps)
        for f in files:
            rel = f if rel_dir == "." else f"{rel_dir}/{f}"
            stem, ext = os.path.splitext(rel)
            if ext in (".png", ".svg"):
                images.add(stem)
            elif ext == ".ogg":
                oggs.append(rel)
    skipped: Counter = Counter()
    plain: dict[str, str] = {}
    for rel in sorted(oggs):
        stem = os.path.splitext(rel)[0]
        name = os.path.basename(stem)
        if "_desc" in name:
            skipped["spoken-description (NAME_desc*.ogg)"] += 1
            continue
        if stem not in images and _language_base(stem, images) is not None:
            skipped["language-suffixed (NAME_xx.ogg)"] += 1
            continue
        if stem not in images:
            skipped["sound-without-image"] += 1
            continue
        plain[stem] = rel
    return plain, skipped, sorted(images)


def _image_file(stamps: Path, rel: str, raster_dir: Path | None) -> tuple[Path | None, str]:
    """The raster file of a stamp picture (SVGs rasterised with rsvg-convert), or (None, why)."""
    p = stamps / rel
    if p.suffix.lower() != ".svg":
        return p, ""
    png = stamps / (rel[:-4] + ".png")
    if png.is_file():
        return png, ""
    if raster_dir is None:
        return None, "svg-no-rasterizer"
    out = raster_dir / (rel[:-4] + ".png")
    try:
        rasterize_svg(p, out)
    except FileNotFoundError:
        return None, "svg-no-rasterizer"
    return out, ""


def rasterize_svg(svg: Path, out_png: Path, max_side: int = 512) -> Path:
    """``rsvg-convert`` ``svg`` to a PNG that fits ``max_side`` (cached: kept if present)."""
    if out_png.is_file():
        return out_png
    tool = shutil.which("rsvg-convert")
    if tool is None:
        raise FileNotFoundError("rsvg-convert not found (Debian package librsvg2-bin)")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_suffix(".tmp.png")
    r = subprocess.run(
        [tool, "-w", str(max_side), "-h", str(max_side), "--keep-aspect-ratio", "-f", "png", "-o", str(tmp), str(svg)],
        capture_output=True, text=True,
    )
    if r.returncode != 0 or not tmp.is_file():
        raise StreamlocError(f"rsvg-convert failed on {svg}: {r.stderr.strip()[-400:]}")
    os.replace(tmp, out_png)
    return out_png


def tuxpaint_pairs(
    cache: Path | None = None,
    *,
    include_uncertain: bool = False,
    instruments: bool = True,
    class_images: bool = True,
    catalog_dir: Path = CATALOG_DIR,
    progress: bool = True,
) -> PairSelection:
    """Candidate pairs from the unpacked Tux Paint stamps joined with the catalog (+ FluidR3
    instruments and class images); the measured checks run in :func:`load_pool`."""
    tux_root = require_unpacked(TUX, cache)
    stamps = tux_root / STAMPS_SUBDIR
    raster_dir = derived_cache_dir(cache) / "svg" / f"{TUX}_{PACKAGES[TUX].version}" if shutil.which("rsvg-convert") else None
    cat_pairs, cat_sounds, cat_images = read_catalog(catalog_dir)
    plain, skipped, _ = _scan_stamps(stamps)
    sel = PairSelection(pairs=[], skipped_files=skipped)
    sel.sources.append({"package": TUX, **_pkg_facts(TUX)})
    if raster_dir is None:
        sel.notes.append("rsvg-convert (Debian librsvg2-bin) not found: SVG-only stamps are left out")

    catalogued = {os.path.splitext(_in_stamps(cat_sounds[r["sound_id"]]["src_path"]))[0] for r in cat_pairs}
    for stem in sorted(plain):
        if stem not in catalogued:
            sel.skipped_files["not-in-catalog (speech-like stamp: letters, digits, signs, dreidels, faces)"] += 1

    kept_sounds: dict[str, list[tuple[str, AVPair]]] = {}
    used_images: set[str] = set()
    for r in cat_pairs:
        snd, img = cat_sounds[r["sound_id"]], cat_images[r["image_id"]]
        used_images.add(r["image_id"])
        reasons: list[str] = []
        why = [w for w in (r.get("why_not") or "").split(";") if w]
        for w in why:
            reasons.append({"indirect": "indirect-sound"}.get(w, w))
        assoc = r["association"]
        if assoc == "uncertain" and not include_uncertain:
            reasons.append("association-uncertain")
        if r["usable"] != "True" and not why:
            reasons.append("catalog-unusable")
        img_rel, snd_rel = _in_stamps(img["src_path"]), _in_stamps(snd["src_path"])
        if not (stamps / snd_rel).is_file():
            reasons.append("sound-file-missing")
        img_path, why_img = _image_file(stamps, img_rel, raster_dir) if not reasons else (stamps / img_rel, "")
        if why_img:
            reasons.append(why_img)
        if reasons:
            sel.dropped.append(Dropped(r["image_id"], r["label"], tuple(dict.fromkeys(reasons)), "catalog"))
            continue
        pair = AVPair(
            pair_id=r["image_id"], label=r["label"], category=r["category"],
            image_path=str(img_path), sound_path=str(stamps / snd_rel),
            image_ref=f"{TUX}:{STAMPS_SUBDIR}/{img_rel}", sound_ref=f"{TUX}:{STAMPS_SUBDIR}/{snd_rel}",
            source="tuxpaint", association="direct" if assoc == "direct" else assoc, license=TUX_LICENSE,
        )
        sel.pairs.append(pair)
        kept_sounds.setdefault(r["label"], []).append((r["sound_id"], pair))

    rendered: dict[str, list[tuple[str, Path]]] = {}
    if instruments:
        if shutil.which("fluidsynth") is None:
            sel.notes.append(
                "fluidsynth (Debian package fluidsynth, build time only) not found: FluidR3 instrument pairs are left out"
            )
            for lab, _, phrases in INSTRUMENTS:
                sel.dropped.append(Dropped(f"fluidr3__{lab}", lab, ("fluidsynth-missing",), "FluidR3 render"))
        else:
            fl_root = require_unpacked(FLUID, cache)
            rendered = render_instruments(fl_root / SF2_SUBPATH, derived_cache_dir(cache) / "fluidr3" / f"{FLUID}_{PACKAGES[FLUID].version}", progress=progress)
            sel.sources.append({"package": FLUID, **_pkg_facts(FLUID), "renderer": _fluidsynth_version()})
        for lab, notes in sorted(rendered.items()):
            imgs = [i for i in cat_images.values() if i["label"] == lab and i["usable"] == "True"]
            if not imgs:
                sel.dropped.append(Dropped(f"fluidr3__{lab}", lab, ("no-image-for-label",), "FluidR3 render"))
                continue
            for irow in sorted(imgs, key=lambda x: x["id"]):
                img_rel = _in_stamps(irow["src_path"])
                img_path, why_img = _image_file(stamps, img_rel, raster_dir)
                for sid, wav in notes:
                    pid = f"{irow['id']}~fluidr3__{sid}"
                    if why_img:
                        sel.dropped.append(Dropped(pid, lab, (why_img,), "FluidR3 instrument"))
                        continue
                    sel.pairs.append(
                        AVPair(
                            pair_id=pid, label=lab, category=irow["category"], image_path=str(img_path), sound_path=str(wav),
                            image_ref=f"{TUX}:{STAMPS_SUBDIR}/{img_rel}", sound_ref=f"{FLUID}:{SF2_SUBPATH}#{sid}",
                            source="fluidr3", association="direct", license=FLUID_LICENSE,
                        )
                    )

    if class_images:
        for iid in sorted(cat_images):
            if iid in used_images:
                continue
            irow = cat_images[iid]
            lab = irow["label"]
            if lab in rendered:
                continue  # instrument pictures were paired with the rendered notes above
            if irow["usable"] != "True":
                sel.dropped.append(Dropped(iid, lab, ("tiny-image",), "class image"))
                continue
            if lab not in kept_sounds:
                sel.dropped.append(Dropped(iid, lab, ("no-sound-for-label",), "class image"))
                continue
            img_rel = _in_stamps(irow["src_path"])
            img_path, why_img = _image_file(stamps, img_rel, raster_dir)
            if why_img:
                sel.dropped.append(Dropped(iid, lab, (why_img,), "class image"))
                continue
            for sid, src in kept_sounds[lab]:
                sel.pairs.append(
                    AVPair(
                        pair_id=f"{iid}~{sid}", label=lab, category=irow["category"], image_path=str(img_path),
                        sound_path=src.sound_path, image_ref=f"{TUX}:{STAMPS_SUBDIR}/{img_rel}", sound_ref=src.sound_ref,
                        source="tuxpaint", association="class", license=TUX_LICENSE,
                    )
                )
    return sel


def _pkg_facts(name: str) -> dict:
    p = PACKAGES[name]
    return {"version": p.version, "sha256": p.sha256, "license": p.license, "license_note": p.license_note}


# --------------------------------------------------------------------------------------------
# FluidR3 rendering


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def write_midi(path: Path, notes: Sequence[tuple[float, float, int, int]], program: int | None, tail: float = 0.6) -> Path:
    """A format-0 standard MIDI file: ``notes`` (start s, length s, key, velocity) on channel 0
    with GM ``program``, or on the percussion channel 10 when ``program`` is None."""
    tpq, tempo_us = 480, 500_000  # 120 bpm → 960 ticks per second
    tps = tpq * 1_000_000 / tempo_us
    ch = 9 if program is None else 0
    ev: list[tuple[int, int, bytes]] = []  # (tick, order, bytes); note-offs before note-ons
    for start, length, key, vel in notes:
        t0 = int(round(start * tps))
        t1 = int(round((start + length) * tps))
        ev.append((t0, 1, bytes([0x90 | ch, key & 0x7F, vel & 0x7F])))
        ev.append((t1, 0, bytes([0x80 | ch, key & 0x7F, 0])))
    ev.sort()
    end = max(t for t, _, _ in ev) + int(round(tail * tps))
    body = bytearray()
    body += _vlq(0) + bytes([0xFF, 0x51, 0x03]) + tempo_us.to_bytes(3, "big")
    if program is not None:
        body += _vlq(0) + bytes([0xC0 | ch, program & 0x7F])
    last = 0
    for t, _, data in ev:
        body += _vlq(t - last) + data
        last = t
    body += _vlq(end - last) + bytes([0xFF, 0x2F, 0x00])
    data = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big") + tpq.to_bytes(2, "big")
    data += b"MTrk" + len(body).to_bytes(4, "big") + bytes(body)
    path.write_bytes(data)
    return path


def _fluidsynth_version() -> str:
    tool = shutil.which("fluidsynth")
    if tool is None:
        return ""
    r = subprocess.run([tool, "--version"], capture_output=True, text=True)
    first = (r.stdout or r.stderr).strip().splitlines()
    return first[0] if first else "fluidsynth"


RENDER_TAIL_S = 0.5


def render_instruments(sf2: Path, out_dir: Path, *, sample_rate: int = 44100, progress: bool = True) -> dict[str, list[tuple[str, Path]]]:
    """Render every phrase of :data:`INSTRUMENTS` with fluidsynth (cached in ``out_dir``).

    Returns label → [(sound id, wav path)]. The manifest records the fluidsynth version; a
    different version re-renders.
    """
    if not Path(sf2).is_file():
        raise FileNotFoundError(f"soundfont not found: {sf2}")
    tool = shutil.which("fluidsynth")
    if tool is None:
        raise FileNotFoundError("fluidsynth not found (Debian package fluidsynth; needed at build time only)")
    out_dir.mkdir(parents=True, exist_ok=True)
    version = _fluidsynth_version()
    manifest_path = out_dir / "manifest.json"
    spec = {"fluidsynth": version, "sample_rate": sample_rate, "tail_s": RENDER_TAIL_S, "instruments": [[l, p, ph] for l, p, ph in INSTRUMENTS]}
    spec_hash = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    try:
        old = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        old = {}
    out: dict[str, list[tuple[str, Path]]] = {}
    jobs = [(lab, prog, i, notes) for lab, prog, phrases in INSTRUMENTS for i, notes in enumerate(phrases)]
    fresh = old.get("spec_sha256") == spec_hash
    bar = _bar(progress, total=len(jobs), desc="render FluidR3 notes", unit="clip")
    for lab, prog, i, notes in jobs:
        sid = f"{lab}_{'ab'[i] if i < 2 else i}"
        wav = out_dir / f"{sid}.wav"
        if not (fresh and wav.is_file()):
            mid = out_dir / f"{sid}.mid"
            write_midi(mid, notes, prog)
            tmp = out_dir / f"{sid}.tmp.wav"
            r = subprocess.run(
                [tool, "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.6", "-r", str(sample_rate), "-F", str(tmp), str(sf2), str(mid)],
                capture_output=True, text=True,
            )
            if r.returncode != 0 or not tmp.is_file():
                raise StreamlocError(f"fluidsynth failed rendering {sid}: {(r.stderr or r.stdout).strip()[-400:]}")
            # keep the phrase and a short release (a cymbal would ring on for ~10 s)
            import soundfile as sf

            data, sr = sf.read(str(tmp), dtype="int16", always_2d=True)
            keep = int(round((max(s + l for s, l, _, _ in notes) + RENDER_TAIL_S) * sr))
            sf.write(str(wav), data[:keep], sr, subtype="PCM_16")
            tmp.unlink()
        out.setdefault(lab, []).append((sid, wav))
        bar.update(1)
    bar.close()
    manifest_path.write_text(json.dumps({"spec_sha256": spec_hash, **spec}, indent=1))
    return out


# --------------------------------------------------------------------------------------------
# user folders


def user_folder_pairs(folder: str | os.PathLike) -> PairSelection:
    """Candidate pairs of a user's folder (see the module docstring for the layout).

    Raises :class:`PairFolderError` listing every layout problem (image without sound, sound
    without image, two sounds for one image, image without alpha or unreadable, nothing found).
    """
    root = Path(folder)
    if not root.is_dir():
        raise PairFolderError(root, [f"folder does not exist or is not a directory: {root}"])
    problems: list[str] = []
    groups: dict[tuple[str, str], dict[str, list[Path]]] = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        if len(rel_dir.parts) > 1:
            for f in files:
                if f.lower().endswith(IMAGE_EXTS + SOUND_EXTS):
                    problems.append(f"{rel_dir / f}: nested more than one folder deep (use FOLDER/LABEL/NAME.*)")
            continue
        for f in sorted(files):
            if f.startswith("."):
                continue
            stem, ext = os.path.splitext(f)
            ext = ext.lower()
            if ext in IMAGE_EXTS:
                kind = "image"
            elif ext in SOUND_EXTS:
                kind = "sound"
            else:
                continue
            key = (str(rel_dir) if rel_dir.parts else "", stem)
            groups.setdefault(key, {"image": [], "sound": []})[kind].append(Path(dirpath) / f)
    if not groups and not problems:
        problems.append("no NAME.png / NAME.wav|ogg|flac files found")
    sel = PairSelection(pairs=[])
    sel.sources.append({"folder": str(root.resolve()), "license": "user-supplied"})
    for (sub, stem), g in sorted(groups.items()):
        rel = f"{sub}/{stem}" if sub else stem
        if not g["image"]:
            problems.append(f"{rel}: sound {', '.join(p.name for p in g['sound'])} has no image {stem}.png")
            continue
        if not g["sound"]:
            problems.append(f"{rel}: image {stem}.png has no sound ({stem}.wav, .ogg or .flac)")
            continue
        if len(g["sound"]) > 1:
            problems.append(f"{rel}: more than one sound for one image: {', '.join(sorted(p.name for p in g['sound']))}")
            continue
        img = g["image"][0]
        try:
            load_rgba(img, require_alpha=True)
        except (ValueError, OSError) as exc:
            problems.append(f"{rel}: {exc}")
            continue
        label = sub if sub else stem
        snd = g["sound"][0]
        sel.pairs.append(
            AVPair(
                pair_id=rel, label=label, category=sub or "user", image_path=str(img), sound_path=str(snd),
                image_ref=str(img.relative_to(root)), sound_ref=str(snd.relative_to(root)),
                source="user", association="user", license="user-supplied",
            )
        )
    if problems:
        raise PairFolderError(root, problems)
    return sel


# --------------------------------------------------------------------------------------------
# media loading and measured checks


def load_rgba(path: str | os.PathLike, *, require_alpha: bool = True) -> np.ndarray:
    """RGBA uint8 (h, w, 4) of an image file, cropped to its non-zero alpha.

    Raises ValueError for an unreadable image, one without an alpha channel (when
    ``require_alpha``) or a fully transparent one.
    """
    import cv2

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"image not found: {p}")
    im = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if im is None:
        raise ValueError(f"{p.name}: OpenCV cannot decode this image")
    if im.dtype == np.uint16:
        im = ((im.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif im.dtype != np.uint8:
        raise ValueError(f"{p.name}: unsupported pixel type {im.dtype}")
    if im.ndim == 2 or im.shape[2] in (1, 3):
        if require_alpha:
            raise ValueError(f"{p.name}: image has no alpha channel (an object cut-out needs one)")
        im = cv2.cvtColor(im, cv2.COLOR_GRAY2BGRA if im.ndim == 2 or im.shape[2] == 1 else cv2.COLOR_BGR2BGRA)
    elif im.shape[2] == 2:
        g, a = im[..., 0], im[..., 1]
        im = np.dstack([g, g, g, a])
    rgba = np.ascontiguousarray(im[..., [2, 1, 0, 3]])
    try:
        return crop_to_alpha(rgba)
    except ValueError:
        raise ValueError(f"{p.name}: image is fully transparent") from None


def load_pool(
    selection: PairSelection,
    *,
    sample_rate: int = 22050,
    min_source_rate: int = 16000,
    min_image_side: int = 64,
    progress: bool = True,
) -> tuple[PairPool, PairReport]:
    """Decode the candidate pairs, apply the measured checks, resample the sounds with soxr.

    Sounds are mono (channel mean), their leading/trailing silence (below −50 dB of the peak)
    trimmed, resampled to ``sample_rate``. Returns the pool of kept pairs and the report.
    """
    dropped = list(selection.dropped)
    kept_media: list[ObjectMedia] = []
    images: dict[str, np.ndarray | str] = {}
    sounds: dict[str, tuple[np.ndarray, int, str] | str] = {}
    first_of_hash: dict[str, str] = {}
    bar = _bar(progress, total=len(selection.pairs), desc="load pairs", unit="pair")
    for pair in sorted(selection.pairs, key=lambda p: p.pair_id):
        bar.update(1)
        reasons: list[str] = []
        detail: list[str] = []
        if pair.image_path not in images:
            try:
                images[pair.image_path] = load_rgba(pair.image_path, require_alpha=True)
            except ValueError as exc:
                images[pair.image_path] = str(exc)
        img = images[pair.image_path]
        if isinstance(img, str):
            reasons.append("image-unreadable")
            detail.append(img)
        elif max(img.shape[:2]) < min_image_side:
            reasons.append("tiny-image")
            detail.append(f"alpha box {img.shape[1]}×{img.shape[0]} < {min_image_side} px")
        if pair.sound_path not in sounds:
            try:
                x, sr = decode_audio(pair.sound_path)
                digest = hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes()).hexdigest()
                sounds[pair.sound_path] = (x, sr, digest)
            except Exception as exc:  # MediaError, FileNotFoundError, decoder errors
                sounds[pair.sound_path] = f"{type(exc).__name__}: {exc}"
        snd = sounds[pair.sound_path]
        if isinstance(snd, str):
            reasons.append("sound-unreadable")
            detail.append(snd)
        else:
            x, sr, digest = snd
            if sr < min_source_rate:
                reasons.append("low-sample-rate")
                detail.append(f"{sr} Hz < {min_source_rate} Hz")
            peak = float(np.abs(x).max()) if len(x) else 0.0
            if peak < 1e-4:
                reasons.append("silent-sound")
                detail.append("digital silence" if peak == 0 else f"peak {20 * np.log10(peak):.0f} dBFS")
            first = first_of_hash.setdefault(digest, pair.sound_path)
            if first != pair.sound_path:
                reasons.append("dup-sound")
                detail.append(f"same samples as {first}")
        if reasons:
            dropped.append(Dropped(pair.pair_id, pair.label, tuple(reasons), "; ".join(detail)))
            continue
        x = trim_silence(np.asarray(x, np.float32))
        y = np.ascontiguousarray(resample(x, sr, sample_rate), np.float32)
        kept_media.append(ObjectMedia(pair, img, y))
    bar.close()
    if not kept_media:
        raise StreamlocError("no pair survived the checks: " + json.dumps(Counter(r for d in dropped for r in d.reasons)))
    pool = PairPool(kept_media, sample_rate)
    report = PairReport(
        kept=[m.pair for m in pool.items], dropped=sorted(dropped, key=lambda d: d.pair_id),
        skipped_files=dict(selection.skipped_files), sources=list(selection.sources),
        notes=list(selection.notes), sample_rate=sample_rate,
    )
    return pool, report


# --------------------------------------------------------------------------------------------
# backgrounds


def _load_rgb(path: Path, max_side: int) -> np.ndarray:
    import cv2

    im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if im is None:
        raise ValueError(f"cannot decode background {path}")
    h, w = im.shape[:2]
    s = max_side / max(h, w)
    if s < 1:
        im = cv2.resize(im, (int(round(w * s)), int(round(h * s))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(im[..., ::-1])


def load_wallpapers(cache: Path | None = None, *, max_side: int = 1600) -> tuple[list[Background], dict]:
    """The :data:`WALLPAPERS` photographs (downscaled to ``max_side``) and their source facts."""
    root = require_unpacked(WALLS, cache)
    out = []
    for name, fname, author, lic in WALLPAPERS:
        rel = f"usr/share/wallpapers/{name}/contents/images/{fname}"
        out.append(Background(name, _load_rgb(root / rel, max_side), f"{WALLS}:{rel} ({author})", lic))
    facts = {"package": WALLS, **_pkg_facts(WALLS), "wallpapers": [{"name": n, "author": a, "license": l} for n, _, a, l in WALLPAPERS]}
    return out, facts


def load_background_folder(folder: str | os.PathLike, *, max_side: int = 1600) -> tuple[list[Background], dict]:
    """Every .jpg/.jpeg/.png of ``folder`` (sorted) as a background."""
    root = Path(folder)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if root.is_dir() else []
    if not files:
        raise PairFolderError(root, ["no .jpg/.jpeg/.png backgrounds found"])
    out = [Background(p.stem, _load_rgb(p, max_side), p.name, "user-supplied") for p in files]
    return out, {"folder": str(root.resolve()), "license": "user-supplied", "count": len(out)}
