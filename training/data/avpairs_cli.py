"""Command line of the ``avpairs`` benchmark builder.

::

    python -m training.data.avpairs_cli fetch                      # download + verify + unpack
    python -m training.data.avpairs_cli list                       # pairs kept, and why others were dropped
    python -m training.data.avpairs_cli build --protocol grid --split test --count 200 --seed 0 --out DIR
    python -m training.data.avpairs_cli build --pairs MY_FOLDER --backgrounds generated ...
    python -m training.data.avpairs_cli demo --out streamloc/assets/demo   # the bundled demo clip

``--pairs`` is ``tuxpaint`` (default: the Tux Paint stamps + catalog + FluidR3 instruments, needs
``fetch`` first) or a folder of ``NAME.png`` + ``NAME.wav|ogg|flac`` pairs. ``--backgrounds`` is
``wallpapers`` (default with ``tuxpaint``), ``generated`` (default with a folder) or a folder of
pictures. Errors are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from streamloc.errors import StreamlocError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.data.avpairs_cli", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=None, help="cache folder (default $STREAMLOC_CACHE_DIR, $XDG_CACHE_HOME/streamloc or ~/.cache/streamloc)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("fetch", help="download (apt-get download), verify (SHA-256) and unpack (dpkg-deb -x) the pinned packages")
    f.add_argument("--package", action="append", default=None, help="only this package (repeatable)")
    f.add_argument("--drop-debs", action="store_true", help="delete each .deb after unpacking it")

    def pair_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--pairs", default="tuxpaint", help="'tuxpaint' or a folder of NAME.png + NAME.wav|ogg|flac")
        p.add_argument("--include-uncertain", action="store_true", help="also keep catalog pairs whose association is 'uncertain'")
        p.add_argument("--no-instruments", action="store_true", help="leave out the FluidR3 instrument pairs")
        p.add_argument("--no-class-images", action="store_true", help="leave out catalog pictures without a sound of their own")
        p.add_argument("--min-source-rate", type=int, default=16000, help="drop sounds recorded below this rate (Hz)")
        p.add_argument("--min-image-side", type=int, default=64, help="drop pictures whose alpha box is smaller (px)")
        p.add_argument("--sample-rate", type=int, default=22050, help="sample rate of the stems and mixtures")

    ls = sub.add_parser("list", help="the pairs kept and the reasons the others were dropped")
    pair_opts(ls)
    ls.add_argument("--json", type=Path, default=None, help="also write the full report here")
    ls.add_argument("--verbose", "-v", action="store_true", help="list every dropped pair")

    b = sub.add_parser("build", help="compose and write scenes")
    pair_opts(b)
    from training.data.avpairs import PROTOCOLS, SPLITS

    b.add_argument("--protocol", required=True, choices=PROTOCOLS)
    b.add_argument("--split", required=True, choices=SPLITS)
    b.add_argument("--count", type=int, required=True)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--first-index", type=int, default=0)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--backgrounds", default=None, help="'wallpapers', 'generated' or a folder of pictures")
    b.add_argument("--image-format", choices=("png", "jpg"), default="png")
    b.add_argument("--audio-format", choices=("wav", "flac"), default="wav")
    b.add_argument("--duration", type=float, default=3.0)
    b.add_argument("--level-jitter-db", type=float, default=0.0)
    b.add_argument("--openset-seed", type=int, default=0)
    b.add_argument("--overwrite", action="store_true")

    d = sub.add_parser("demo", help="compose and write the ~15-s demo clip (demo_clip.mp4/.json/.mask.png) that `streamloc demo` plays")
    pair_opts(d)
    d.add_argument("--out", type=Path, required=True, help="folder for the clip (the bundled one: streamloc/assets/demo)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--backgrounds", default=None, help="'wallpapers', 'generated' or a folder of pictures")
    d.add_argument("--crf", type=int, default=20, help="H.264 quality (lower = better, larger)")
    return ap


def _pairs(args, progress: bool):
    from training.data.avpairs_sources import load_pool, tuxpaint_pairs, user_folder_pairs

    if args.pairs == "tuxpaint":
        sel = tuxpaint_pairs(
            args.cache, include_uncertain=args.include_uncertain, instruments=not args.no_instruments,
            class_images=not args.no_class_images, progress=progress,
        )
    else:
        sel = user_folder_pairs(args.pairs)
    return load_pool(
        sel, sample_rate=args.sample_rate, min_source_rate=args.min_source_rate,
        min_image_side=args.min_image_side, progress=progress,
    )


def _cmd_fetch(args, progress: bool) -> int:
    from training.data.avpairs_fetch import PACKAGES, fetch, tool_status

    roots = fetch(args.package, args.cache, progress=progress, keep_debs=not args.drop_debs)
    for name, root in roots.items():
        p = PACKAGES[name]
        print(f"{p.spec}  sha256 {p.sha256}  {p.license}  -> {root}")
    tools = tool_status()
    for t in ("fluidsynth", "rsvg-convert"):
        if tools[t] is None:
            pkg = {"fluidsynth": "fluidsynth", "rsvg-convert": "librsvg2-bin"}[t]
            print(f"note: `{t}` not found: install Debian's `{pkg}` at build time, or the pairs that need it are left out")
    return 0


def _cmd_list(args, progress: bool) -> int:
    pool, rep = _pairs(args, progress)
    d = rep.as_dict()
    print(f"kept {d['kept']} pairs of {d['classes']} classes at {d['sample_rate']} Hz: {d['kept_by_source']}")
    by_label: dict[str, list[str]] = {}
    for p in rep.kept:
        by_label.setdefault(p.label, []).append(p.pair_id)
    for lab in sorted(by_label):
        print(f"  {lab:16s} {pool.category_of[lab]:12s} {len(by_label[lab])}: {', '.join(by_label[lab])}")
    print(f"dropped {d['dropped']} pairs; reasons (a pair can have several):")
    for r, n in d["dropped_by_reason"].items():
        print(f"  {r:24s} {n}")
    if args.verbose:
        for x in d["dropped_pairs"]:
            print(f"  - {x['pair_id']} ({x['label']}): {', '.join(x['reasons'])} {x['detail']}")
    if d["skipped_files"]:
        print("sound files skipped before pairing:")
        for r, n in d["skipped_files"].items():
            print(f"  {r:24s} {n}")
    for n in d["notes"]:
        print(f"note: {n}")
    if args.json:
        args.json.write_text(json.dumps(d, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _backgrounds(args):
    """(backgrounds, their facts) that ``--backgrounds`` asks for."""
    from training.data.avpairs import generated_backgrounds
    from training.data.avpairs_sources import load_background_folder, load_wallpapers

    bg_kind = args.backgrounds or ("wallpapers" if args.pairs == "tuxpaint" else "generated")
    if bg_kind == "wallpapers":
        bgs, bg_facts = load_wallpapers(args.cache)
    elif bg_kind == "generated":
        bgs = generated_backgrounds()
        bg_facts = {"generated": len(bgs), "license": "CC0-1.0 (made by the builder)"}
    else:
        bgs, bg_facts = load_background_folder(bg_kind)
    return bgs, bg_facts


def _cmd_build(args, progress: bool) -> int:
    from training.data.avpairs import SceneConfig
    from training.data.avpairs_dataset import build_dataset

    pool, rep = _pairs(args, progress)
    bgs, bg_facts = _backgrounds(args)
    cfg = SceneConfig(duration=args.duration, level_jitter_db=args.level_jitter_db, openset_seed=args.openset_seed)
    rd = rep.as_dict()
    summary = {k: rd[k] for k in ("kept", "kept_by_source", "classes", "dropped", "dropped_by_reason", "skipped_files", "notes")}
    summary["kept_pairs"] = rd["kept_pairs"]
    sources = list(rd["sources"]) + ([{"package": bg_facts["package"], **{k: v for k, v in bg_facts.items() if k != "package"}}] if "package" in bg_facts else [])
    index = build_dataset(
        args.out, pool, bgs, protocol=args.protocol, split=args.split, count=args.count, seed=args.seed,
        first_index=args.first_index, config=cfg, image_format=args.image_format, audio_format=args.audio_format, sources=sources,
        background_facts=bg_facts, pair_report=summary, overwrite=args.overwrite, progress=progress,
    )
    print(f"wrote {args.count} {args.protocol} scenes of split {args.split} to {args.out} (index {index})")
    return 0


def _cmd_demo(args, progress: bool) -> int:
    from training.data.avpairs_demo import compose_demo, write_demo

    pool, rep = _pairs(args, progress)
    bgs, bg_facts = _backgrounds(args)
    clip = compose_demo(pool, bgs, seed=args.seed)
    sources = _demo_sources(rep.as_dict()["sources"], {o.pair.source for o in clip.objects})
    if "wallpapers" in bg_facts:  # only the wallpaper in the clip
        bg_facts = {**bg_facts, "wallpapers": [w for w in bg_facts["wallpapers"] if w["name"] == clip.background_meta["bg_id"]]}
    paths = write_demo(clip, args.out, sources=sources, background_facts=bg_facts, crf=args.crf)
    for seg in clip.segments():
        names = [clip.objects[i].label for i in seg["sounding"]] or ["(silence)"]
        print(f"  {seg['start_s']:5.1f}-{seg['end_s']:5.1f} s: {', '.join(names)}")
    silent = [o.label for o in clip.objects if not o.sounding]
    if silent:
        print(f"  silent: {', '.join(silent)}")
    for p in paths.values():
        print(f"wrote {p} ({p.stat().st_size} bytes)")
    return 0


def _demo_sources(report_sources: list[dict], pair_kinds: set[str]) -> list[dict]:
    """The report's sources that the demo's pairs come from."""
    from training.data.avpairs_sources import FLUID, TUX

    wanted = set()
    if pair_kinds & {"tuxpaint", "fluidr3"}:
        wanted.add(TUX)  # every catalog pair has a Tux Paint picture
    if "fluidr3" in pair_kinds:
        wanted.add(FLUID)
    return [s for s in report_sources if s.get("package") in wanted or ("folder" in s and "user" in pair_kinds)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = not args.no_progress
    try:
        return {"fetch": _cmd_fetch, "list": _cmd_list, "build": _cmd_build, "demo": _cmd_demo}[args.cmd](args, progress)
    except (StreamlocError, FileNotFoundError, ValueError) as exc:
        msg = str(exc)
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
