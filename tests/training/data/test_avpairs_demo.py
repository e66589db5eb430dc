"""The bundled demo clip's composer (training.data.avpairs_demo): offline, on a tiny generated pair
folder (flat-coloured shapes + sine tones through ``user_folder_pairs``) and generated backgrounds;
plus checks of the committed clip in ``streamloc/assets/demo`` (a rebuild from the fetched Debian
packages is skipped when the cache is empty)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
sf = pytest.importorskip("soundfile")
av = pytest.importorskip("av")

from training.data import avpairs_cli  # noqa: E402
from training.data.avpairs import PairPool, generated_backgrounds, mask_box  # noqa: E402
from training.data.avpairs_demo import (  # noqa: E402
    DEFAULT_ROLES,
    DEMO_FILES,
    DEMO_FORMAT,
    DemoConfig,
    compose_demo,
    sounding_envelope,
    write_demo,
)
from training.data.avpairs_sources import load_pool, user_folder_pairs  # noqa: E402

SR = 16000
REPO = Path(__file__).resolve().parents[3]
ASSETS = REPO / "streamloc" / "assets" / "demo"
# label → (colour RGB, tone Hz, seconds): violin and cow are in DEFAULT_ROLES' lists, the others not
CLASSES = {
    "violin": ((200, 90, 30), 440.0, 2.0),
    "cow": ((240, 240, 240), 180.0, 0.7),
    "alpha": ((230, 40, 40), 900.0, 1.3),
    "bravo": ((40, 200, 60), 1300.0, 4.0),
}


def _rgba(colour, h: int, w: int) -> np.ndarray:
    alpha = np.zeros((h, w), np.uint8)
    cv2.ellipse(alpha, (w // 2, h // 2), (w // 2 - 3, h // 2 - 3), 0, 0, 360, 255, -1, cv2.LINE_AA)
    out = np.zeros((h, w, 4), np.uint8)
    out[..., :3] = colour
    out[..., 3] = alpha
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo_pairs")
    for i, (lab, (col, f, sec)) in enumerate(CLASSES.items()):
        assert cv2.imwrite(str(root / f"{lab}.png"), _rgba(col, 90 + 20 * i, 70 + 10 * i)[..., [2, 1, 0, 3]])
        t = np.arange(int(sec * SR)) / SR
        sf.write(str(root / f"{lab}.wav"), (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32), SR)
    return root


@pytest.fixture(scope="module")
def pool(folder) -> PairPool:
    return load_pool(user_folder_pairs(folder), sample_rate=SR, progress=False)[0]


@pytest.fixture(scope="module")
def bgs():
    return generated_backgrounds(2, seed=3, size=(300, 400))


@pytest.fixture(scope="module")
def clip(pool, bgs):
    return compose_demo(pool, bgs, seed=5, keep_alpha=True)


def test_composition_is_deterministic(pool, bgs, clip):
    again = compose_demo(pool, bgs, seed=5)
    assert np.array_equal(clip.image, again.image)
    assert np.array_equal(clip.label_map(), again.label_map())
    assert np.array_equal(clip.stems, again.stems) and np.array_equal(clip.mixture, again.mixture)
    assert [(o.pair.pair_id, o.box, o.placement, o.sound_offset) for o in clip.objects] == \
        [(o.pair.pair_id, o.box, o.placement, o.sound_offset) for o in again.objects]
    assert clip.composition_sha256() == again.composition_sha256()
    other = compose_demo(pool, bgs, seed=6)
    assert other.composition_sha256() != clip.composition_sha256()


def test_pairs_follow_the_role_preferences_with_a_seeded_fallback(pool, bgs, clip):
    labels = [o.label for o in clip.objects]
    # violin and cow are the first choices of roles 0 and 1; role 2's labels are absent: drawn
    assert labels[:2] == ["violin", "cow"] and labels[2] in ("alpha", "bravo")
    assert len(set(labels)) == 3
    assert [o.sounding for o in clip.objects] == [True, True, False]
    assert [o.intervals for o in clip.objects] == [r.intervals for r in DEFAULT_ROLES]
    small = PairPool([m for m in pool.items if m.pair.label in ("violin", "cow")], SR)
    with pytest.raises(ValueError, match="different classes"):
        compose_demo(small, bgs)


def test_frame_geometry_and_masks_agree_with_pasted_alpha(pool, clip):
    cfg = clip.config
    assert clip.image.shape == (480, 640, 3) and clip.image.dtype == np.uint8
    assert clip.num_frames == 225 and clip.frame(0) is clip.image and clip.frame(224) is clip.image
    lab = clip.label_map()
    seen = np.zeros(lab.shape, bool)
    for o in clip.objects:
        # objects never overlap, so the visible mask is exactly the pasted alpha > 0.5
        assert np.array_equal(o.mask, o.alpha > 0.5)
        assert not (seen & o.mask).any()
        seen |= o.mask
        assert np.array_equal(lab == o.index + 1, o.mask)
        assert o.box == mask_box(o.mask)
        x, y, w, h = o.placement
        assert 0 <= x and x + w <= cfg.size[1] and 0 <= y and y + h <= cfg.size[0]
        assert o.alpha[y : y + h, x : x + w].sum() == pytest.approx(o.alpha.sum())
        # fully opaque pixels show the object's own (flat) colour
        colour = CLASSES[o.label][0]
        assert (clip.image[o.alpha == 1.0] == colour).all()
    untouched = sum(o.alpha for o in clip.objects) == 0
    assert np.array_equal(clip.image[untouched], clip.background[untouched])


def test_timeline_silence_stems_and_mixture(clip):
    sr = clip.sample_rate
    n = clip.num_samples
    assert n == 15 * sr and clip.stems.shape == (2, n)
    # 16-bit grid, and the mixture is exactly the sum of the stems
    assert np.array_equal(np.round(clip.stems.astype(np.float64) * 32768) / 32768, clip.stems)
    assert np.array_equal(clip.stems.sum(axis=0, dtype=np.float32), clip.mixture)
    assert np.abs(clip.mixture).max() <= 0.99
    segments = clip.segments()
    assert [(s["start_s"], s["end_s"], s["sounding"]) for s in segments] == [
        (0.0, 3.0, [0]), (3.0, 6.0, [0, 1]), (6.0, 8.0, [1]), (8.0, 11.5, []), (11.5, 15.0, [0])]
    assert {len(s["sounding"]) for s in segments} == {0, 1, 2}
    for o in clip.objects:
        if not o.sounding:
            assert o.stem_index is None and o.gain is None
            continue
        stem = clip.stems[o.stem_index]
        inside = sounding_envelope(o.intervals, n, sr, clip.config.fade_s) > 0
        assert not stem[~inside].any()  # exactly 0 where it does not sound
        for a, b in o.intervals:
            body = stem[int((a + 0.05) * sr) : int((b - 0.05) * sr)]
            assert 20 * np.log10(np.sqrt(np.mean(body.astype(np.float64) ** 2))) > -35
            # 10-ms fades: the first sample of an onset is far below the body's peak
            assert abs(stem[int(round(a * sr))]) < 0.05 * np.abs(body).max()
    for s in segments:
        part = clip.mixture[int(round(s["start_s"] * sr)) : int(round(s["end_s"] * sr))]
        if not s["sounding"]:
            assert not part.any()  # digital silence: no object sounds


def test_config_is_checked(pool, bgs):
    bad = DemoConfig(roles=(DEFAULT_ROLES[0].__class__(DEFAULT_ROLES[0].candidates, ((5.0, 4.0),)),))
    with pytest.raises(ValueError, match="intervals"):
        compose_demo(pool, bgs, config=bad)
    with pytest.raises(ValueError, match="fades"):
        sounding_envelope([(0.0, 0.01)], 1000, 1000)


def _probe(path: Path) -> dict:
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(v)]
        info = {"vcodec": v.codec_context.name, "pix_fmt": v.codec_context.pix_fmt, "size": (v.height, v.width),
                "fps": float(v.average_rate), "frames": len(frames), "acodec": a.codec_context.name,
                "rate": a.rate, "channels": a.codec_context.channels}
    with av.open(str(path)) as c:
        info["audio"] = np.concatenate([f.to_ndarray().mean(axis=0) for f in c.decode(c.streams.audio[0])])
    info["first_frame"] = frames[0]
    return info


def test_write_demo_files_json_and_byte_identical_rebuild(clip, tmp_path):
    paths = write_demo(clip, tmp_path / "a", sources=[{"folder": "x", "license": "user-supplied"}])
    assert {k: p.name for k, p in paths.items()} == DEMO_FILES
    mp4 = paths["video"]
    assert mp4.stat().st_size <= 3_000_000
    p = _probe(mp4)
    assert (p["vcodec"], p["pix_fmt"], p["size"], p["fps"], p["frames"]) == ("h264", "yuv420p", (480, 640), 15.0, 225)
    assert (p["acodec"], p["rate"], p["channels"]) == ("aac", SR, 1)
    assert np.abs(p["first_frame"].astype(int) - clip.image).mean() < 4  # lossy, but the same picture
    x = p["audio"]
    assert abs(len(x) / SR - 15.0) < 0.1
    assert not x[int(8.6 * SR) : int(11.0 * SR)].any() or \
        20 * np.log10(np.abs(x[int(8.6 * SR) : int(11.0 * SR)]).max()) < -60
    assert np.sqrt(np.mean(x[int(4 * SR) : int(5 * SR)] ** 2)) > 0.01
    lab = cv2.imread(str(paths["mask"]), cv2.IMREAD_UNCHANGED)
    assert lab.dtype == np.uint8 and np.array_equal(lab, clip.label_map())

    ann = json.loads(paths["annotation"].read_text(encoding="utf-8"))
    assert ann["format"] == DEMO_FORMAT and ann["seed"] == 5
    assert (ann["fps"], ann["width"], ann["height"], ann["sample_rate"], ann["duration_s"]) == (15, 640, 480, SR, 15.0)
    assert ann["num_frames"] == 225 and ann["num_samples"] == 15 * SR
    assert ann["timeline"] == clip.segments()
    assert ann["background"]["bg_id"].startswith("generated") and ann["background"]["license"] == "CC0-1.0"
    assert set(ann["licenses"]) == {"user-supplied", "CC0-1.0"}
    assert ann["sources"] == [{"folder": "x", "license": "user-supplied"}]
    for o, d in zip(clip.objects, ann["objects"]):
        assert (d["id"], d["mask_value"], d["label"], d["pair_id"]) == (o.index, o.index + 1, o.label, o.pair.pair_id)
        assert d["category"] == o.pair.category and d["license"] == "user-supplied" and d["source"] == "user"
        assert d["box_xyxy"] == list(o.box) and d["area"] == o.area
        assert d["sounding_intervals_s"] == [list(i) for i in o.intervals]
        assert d["sounding"] == o.sounding and (d["sound_source"] is None) == (not o.sounding)
    for k in ("video", "mask"):
        assert ann["files_sha256"][k] == hashlib.sha256(paths[k].read_bytes()).hexdigest()
    assert ann["composition_sha256"] == clip.composition_sha256()

    again = write_demo(clip, tmp_path / "b", sources=[{"folder": "x", "license": "user-supplied"}])
    for k in DEMO_FILES:
        assert paths[k].read_bytes() == again[k].read_bytes(), k


def test_cli_demo_on_a_pair_folder(folder, tmp_path, capsys):
    out = tmp_path / "demo"
    assert avpairs_cli.main(["--no-progress", "demo", "--pairs", str(folder), "--sample-rate", str(SR),
                             "--out", str(out), "--seed", "5"]) == 0
    text = capsys.readouterr().out
    assert "(silence)" in text and "silent:" in text and "demo_clip.mp4" in text
    ann = json.loads((out / "demo_clip.json").read_text())
    assert [o["label"] for o in ann["objects"]][:2] == ["violin", "cow"]
    assert ann["sources"] and ann["sources"][0]["license"] == "user-supplied"
    assert avpairs_cli.main(["--no-progress", "demo", "--pairs", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") >= 1


# --------------------------------------------------------------------------------------------
# the committed clip


def _bundled_json() -> dict:
    p = ASSETS / DEMO_FILES["annotation"]
    if not p.is_file():
        pytest.skip(f"the demo clip has not been built into {ASSETS}")
    return json.loads(p.read_text(encoding="utf-8"))


def test_bundled_clip_matches_its_description():
    from training.data.avpairs_sources import INSTRUMENTS, read_catalog

    ann = _bundled_json()
    assert ann["format"] == DEMO_FORMAT
    video, mask = ASSETS / ann["files"]["video"], ASSETS / ann["files"]["mask"]
    assert video.stat().st_size <= 3_000_000
    for k, p in (("video", video), ("mask", mask)):
        assert hashlib.sha256(p.read_bytes()).hexdigest() == ann["files_sha256"][k]
    # classes of the default (Tux Paint catalog + FluidR3) pool, different, in the expected roles
    pairs, _, _ = read_catalog()
    known = {r["label"] for r in pairs} | {lab for lab, _, _ in INSTRUMENTS}
    labels = [o["label"] for o in ann["objects"]]
    assert len(set(labels)) == 3 and set(labels) <= known
    assert [bool(o["sounding_intervals_s"]) for o in ann["objects"]] == [True, True, False]
    assert {len(s["sounding"]) for s in ann["timeline"]} == {0, 1, 2}
    assert all(o["license"] for o in ann["objects"]) and ann["background"]["license"]
    lab = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
    for o in ann["objects"]:
        assert mask_box(lab == o["mask_value"]) == tuple(o["box_xyxy"])
    p = _probe(video)
    assert (p["frames"], p["size"], p["rate"], p["channels"]) == (ann["num_frames"], (ann["height"], ann["width"]),
                                                                  ann["sample_rate"], 1)


def test_bundled_clip_rebuilds_identically_from_the_packages():
    from training.data.avpairs_fetch import PACKAGES, is_unpacked
    from training.data.avpairs_sources import load_wallpapers, tuxpaint_pairs

    ann = _bundled_json()
    if not all(is_unpacked(n) for n in PACKAGES):
        pytest.skip("Debian sources not fetched (python -m training.data.avpairs_cli fetch)")
    pool, _ = load_pool(tuxpaint_pairs(progress=False), sample_rate=ann["sample_rate"], progress=False)
    bgs, _ = load_wallpapers()
    clip = compose_demo(pool, bgs, seed=ann["seed"])
    assert clip.composition_sha256() == ann["composition_sha256"]
    assert [o.pair.pair_id for o in clip.objects] == [o["pair_id"] for o in ann["objects"]]
