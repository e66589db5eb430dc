"""The avpairs benchmark builder: offline tests on tiny synthetic pair folders.

Pairs are RGBA PNGs of flat-coloured shapes with sine tones of distinct frequencies, read through
the user-folder path. Tests that need the real Debian packages are marked ``slow`` and skipped
when the cache has not been filled (``python -m training.data.avpairs_cli fetch``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
sf = pytest.importorskip("soundfile")

from training.data.avpairs import (  # noqa: E402
    PROTOCOLS,
    PairPool,
    SPLIT_BASE,
    SPLITS,
    SceneConfig,
    active_rms,
    compose_scene,
    generated_backgrounds,
    mask_box,
    openset_partition,
    scene_rng,
    split_labels,
)
from training.data.avpairs_dataset import build_dataset, read_index, read_scene  # noqa: E402
from training.data.avpairs_fetch import (  # noqa: E402
    PACKAGES,
    PackageHashError,
    PackageMissingError,
    deb_cache_dir,
    deb_filename,
    download_deb,
    is_unpacked,
    require_unpacked,
)
from training.data.avpairs_sources import (  # noqa: E402
    PairFolderError,
    _scan_stamps,
    load_pool,
    read_catalog,
    user_folder_pairs,
    write_midi,
)
from training.data.mixtures import mix_waveform_sum  # noqa: E402

SR = 16000
# label → (colour RGB, tone Hz, source rate, seconds, shape, sub-folder or None)
CLASSES = {
    "alpha": ((230, 40, 40), 300.0, 16000, 0.5, "ellipse", None),
    "bravo": ((40, 200, 60), 520.0, 22050, 4.0, "rect", None),
    "charlie": ((40, 70, 230), 740.0, 44100, 1.25, "triangle", "charlie"),
    "delta": ((220, 200, 30), 980.0, 16000, 3.5, "ellipse", "delta"),
    "echo": ((200, 40, 200), 1220.0, 16000, 0.75, "ring", None),
    "foxtrot": ((30, 200, 200), 1460.0, 16000, 2.0, "rect", None),
    "golf": ((250, 140, 20), 1700.0, 16000, 0.4, "triangle", None),
    "hotel": ((120, 60, 20), 1940.0, 16000, 5.0, "ellipse", None),
}


def _shape_rgba(shape: str, colour, h: int = 90, w: int = 120) -> np.ndarray:
    alpha = np.zeros((h, w), np.uint8)
    if shape == "ellipse":
        cv2.ellipse(alpha, (w // 2, h // 2), (w // 2 - 4, h // 2 - 4), 0, 0, 360, 255, -1, cv2.LINE_AA)
    elif shape == "rect":
        alpha[10 : h - 10, 8 : w - 8] = 255
    elif shape == "triangle":
        pts = np.array([[w // 2, 4], [4, h - 4], [w - 4, h - 4]], np.int32)
        cv2.fillPoly(alpha, [pts], 255, cv2.LINE_AA)
    elif shape == "ring":
        cv2.circle(alpha, (w // 2, h // 2), h // 2 - 3, 255, -1, cv2.LINE_AA)
        cv2.circle(alpha, (w // 2, h // 2), h // 5, 0, -1, cv2.LINE_AA)
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = alpha
    return rgba


def _write_png(path: Path, rgba: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgba[..., [2, 1, 0, 3]])


def _tone(freq: float, sr: int, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _make_folder(root: Path, classes=CLASSES) -> Path:
    for lab, (col, f, sr, sec, shape, sub) in classes.items():
        d = root / sub if sub else root
        name = f"{lab}1" if sub else lab
        _write_png(d / f"{name}.png", _shape_rgba(shape, col))
        ext = ".flac" if lab == "delta" else ".wav"
        sf.write(str(d / f"{name}{ext}"), _tone(f, sr, sec), sr)
    (root / "README.txt").write_text("not media; ignored")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return _make_folder(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def pool_report(folder):
    return load_pool(user_folder_pairs(folder), sample_rate=SR, progress=False)


@pytest.fixture(scope="module")
def pool(pool_report):
    return pool_report[0]


@pytest.fixture(scope="module")
def bgs():
    return generated_backgrounds(3, seed=1, size=(240, 320))


def _colour(pool, pair_id):
    return next(m.rgba[..., :3].reshape(-1, 3)[m.rgba[..., 3].reshape(-1) == 255][0] for m in pool.items if m.pair.pair_id == pair_id)


def _tone_of(label):
    return CLASSES[label][1]


# --------------------------------------------------------------------------------------------
# pair folders


def test_user_folder_pairs_labels_and_report(pool_report):
    pool, rep = pool_report
    assert pool.labels == sorted(CLASSES)
    assert pool.sample_rate == SR
    ids = {m.pair.pair_id: m.pair for m in pool.items}
    assert ids["charlie/charlie1"].label == "charlie" and ids["charlie/charlie1"].category == "charlie"
    assert ids["alpha"].label == "alpha" and ids["alpha"].category == "user"
    for m in pool.items:  # resampled to the pool rate, trimmed, cropped to alpha
        sec = CLASSES[m.pair.label][3]
        assert abs(len(m.sound) - sec * SR) <= 3
        assert m.rgba[..., 3].any(axis=0)[[0, -1]].all() and m.rgba[..., 3].any(axis=1)[[0, -1]].all()
    assert rep.dropped == [] and len(rep.kept) == len(CLASSES)


def test_defective_pairs_are_dropped_with_reasons(tmp_path):
    root = _make_folder(tmp_path / "p", {k: CLASSES[k] for k in ("alpha", "bravo", "echo")})
    _write_png(root / "tiny.png", _shape_rgba("ellipse", (1, 2, 3), h=20, w=30))
    sf.write(str(root / "tiny.wav"), _tone(400, SR, 1.0), SR)
    _write_png(root / "hush.png", _shape_rgba("rect", (9, 9, 9)))
    sf.write(str(root / "hush.wav"), np.zeros(SR, np.float32), SR)
    _write_png(root / "phone.png", _shape_rgba("rect", (7, 7, 7)))
    sf.write(str(root / "phone.wav"), _tone(300, 8000, 1.0), 8000)
    _write_png(root / "copycat.png", _shape_rgba("ellipse", (5, 5, 5)))
    sf.write(str(root / "copycat.wav"), _tone(300.0, 16000, 0.5), 16000)  # same samples as alpha.wav
    pool, rep = load_pool(user_folder_pairs(root), sample_rate=SR, progress=False)
    reasons = {d.pair_id: d.reasons for d in rep.dropped}
    assert reasons == {
        "tiny": ("tiny-image",),
        "hush": ("silent-sound",),
        "phone": ("low-sample-rate",),
        "copycat": ("dup-sound",),
    }
    assert rep.reason_counts() == {"dup-sound": 1, "low-sample-rate": 1, "silent-sound": 1, "tiny-image": 1}
    assert pool.labels == ["alpha", "bravo", "echo"]
    # the rate floor is a policy: lowering it keeps the 8 kHz clip
    pool2, _ = load_pool(user_folder_pairs(root), sample_rate=SR, min_source_rate=8000, progress=False)
    assert "phone" in pool2.labels


def test_malformed_folder_lists_every_problem(tmp_path):
    root = tmp_path / "bad"
    _write_png(root / "lonely.png", _shape_rgba("rect", (1, 1, 1)))  # no sound
    sf.write(str(root / "orphan.wav"), _tone(300, SR, 0.5), SR)  # no image
    cv2.imwrite(str(root / "opaque.png"), np.full((50, 80, 3), 128, np.uint8))  # no alpha channel
    sf.write(str(root / "opaque.wav"), _tone(300, SR, 0.5), SR)
    clear = np.zeros((40, 40, 4), np.uint8)
    _write_png(root / "ghost.png", clear)  # fully transparent
    sf.write(str(root / "ghost.wav"), _tone(300, SR, 0.5), SR)
    _write_png(root / "twice.png", _shape_rgba("rect", (2, 2, 2)))
    sf.write(str(root / "twice.wav"), _tone(300, SR, 0.5), SR)
    sf.write(str(root / "twice.flac"), _tone(300, SR, 0.5), SR)
    (root / "broken.png").write_bytes(b"not a png")
    sf.write(str(root / "broken.wav"), _tone(300, SR, 0.5), SR)
    _write_png(root / "a" / "b" / "deep.png", _shape_rgba("rect", (3, 3, 3)))
    with pytest.raises(PairFolderError) as ei:
        user_folder_pairs(root)
    msg = str(ei.value)
    for needle in (
        "lonely: image lonely.png has no sound",
        "orphan: sound orphan.wav has no image orphan.png",
        "opaque: opaque.png: image has no alpha channel",
        "ghost: ghost.png: image is fully transparent",
        "twice: more than one sound for one image: twice.flac, twice.wav",
        "broken: broken.png: OpenCV cannot decode this image",
        "nested more than one folder deep",
    ):
        assert needle in msg, (needle, msg)
    assert len(ei.value.problems) == 7
    with pytest.raises(PairFolderError, match="no NAME.png"):
        (tmp_path / "empty").mkdir()
        user_folder_pairs(tmp_path / "empty")
    with pytest.raises(PairFolderError, match="does not exist"):
        user_folder_pairs(tmp_path / "nope")


def test_stamp_scan_skips_spoken_and_language_files(tmp_path):
    st = tmp_path / "stamps"
    files = [
        "animals/cow.png", "animals/cow.ogg", "animals/cow_desc.ogg", "animals/cow_desc_fr.ogg",
        "math/7.png", "math/7_en_GB.ogg", "math/7_zh_tw.ogg", "math/7_fr.ogg",
        "town/xing_ped.png", "town/xing_ped.ogg", "bugs/mosquito.ogg", "svg/kettle.svg", "svg/kettle.ogg",
    ]
    for f in files:
        (st / f).parent.mkdir(parents=True, exist_ok=True)
        (st / f).write_bytes(b"")
    plain, skipped, _ = _scan_stamps(st)
    assert plain == {"animals/cow": "animals/cow.ogg", "town/xing_ped": "town/xing_ped.ogg", "svg/kettle": "svg/kettle.ogg"}
    assert skipped == {
        "spoken-description (NAME_desc*.ogg)": 2,
        "language-suffixed (NAME_xx.ogg)": 3,
        "sound-without-image": 1,
    }


def test_catalog_is_carried_into_the_project():
    pairs, sounds, images = read_catalog()
    assert len(pairs) == 99 and len(sounds) == 99 and len(images) == 123
    assert {r["association"] for r in pairs} == {"direct", "uncertain", "indirect"}
    for r in pairs:
        assert r["sound_id"] in sounds and r["image_id"] in images
    assert sounds["tp__animals-mammals-bovines-ram"]["dup_of"] == "tp__animals-mammals-bovines-mountaingoat"


# --------------------------------------------------------------------------------------------
# scenes: masks, boxes and pixels


def _expected_composite(scene, pool):
    """Image rebuilt from the background and each object's flat colour and layer alpha."""
    order = sorted(scene.objects, key=lambda o: o.paste_order)
    out = scene.background.astype(np.float64)
    for o in order:
        a = o.alpha.astype(np.float64)[..., None]
        out = _colour(pool, o.pair_id).astype(np.float64) * a + (1 - a) * out
    return out


def _visible_weights(scene):
    order = sorted(scene.objects, key=lambda o: o.paste_order)
    trans = np.ones(scene.image.shape[:2])
    w = {}
    for o in reversed(order):
        w[o.index] = o.alpha.astype(np.float64) * trans
        trans = trans * (1 - o.alpha.astype(np.float64))
    return w


def _check_scene_geometry(scene, pool):
    # the image is the background with the flat-coloured layers pasted in order
    assert np.abs(scene.image.astype(np.float64) - _expected_composite(scene, pool)).max() <= 1.0
    w = _visible_weights(scene)
    owner = np.zeros(scene.image.shape[:2], int)
    for o in scene.objects:
        # mask = where the object supplies more than half the colour (its visible alpha region)
        assert np.array_equal(o.mask, w[o.index] > 0.5)
        assert o.mask.any()
        assert o.box == mask_box(o.mask)
        x1, y1, x2, y2 = o.box
        assert o.mask[y1:y2, x1:x2].sum() == o.mask.sum()
        assert o.mask[y1, x1:x2].any() and o.mask[y2 - 1, x1:x2].any()
        assert o.mask[y1:y2, x1].any() and o.mask[y1:y2, x2 - 1].any()
        # the alpha layer lies inside the placement rectangle
        px, py, pw, ph = o.placement
        inside = np.zeros_like(o.mask)
        inside[py : py + ph, px : px + pw] = True
        assert not (o.alpha[~inside] > 0).any()
        # where the object is opaque and nothing was pasted over it, the pixel is its colour
        later = [p for p in scene.objects if p.paste_order > o.paste_order]
        clean = (o.alpha == 1.0) & ~np.any([p.alpha > 0 for p in later], axis=0) if later else (o.alpha == 1.0)
        assert clean.any() or later
        assert (scene.image[clean] == _colour(pool, o.pair_id)).all()
        assert not (owner[o.mask] > 0).any()  # masks never overlap
        owner[o.mask] = o.index + 1
    # outside every layer the pixels are the background's
    none = ~np.any([o.alpha > 0 for o in scene.objects], axis=0)
    assert (scene.image[none] == scene.background[none]).all()
    assert np.array_equal(scene.label_map(), owner.astype(np.uint8))


@pytest.mark.parametrize("protocol", ["solo", "duet", "trio", "grid"])
def test_tile_protocol_masks_and_boxes(pool, bgs, protocol):
    n = {"solo": 1, "duet": 2, "trio": 3, "grid": 4}[protocol]
    for index in range(3):
        s = compose_scene(pool, bgs, protocol, seed=5, split="test", index=index, keep_alpha=True)
        assert s.image.shape == ({"grid": 448}.get(protocol, 224), 224 * (2 if protocol == "grid" else n), 3)
        assert len(s.objects) == n and len({o.label for o in s.objects}) == n
        assert sum(o.sounding for o in s.objects) == (2 if protocol == "grid" else n)
        _check_scene_geometry(s, pool)
        for o in s.objects:  # each object stays in its own 224² tile
            tx, ty, tw, th = s.tiles[o.tile]
            x1, y1, x2, y2 = o.box
            assert tx <= x1 and x2 <= tx + tw and ty <= y1 and y2 <= ty + th
            assert o.visible_fraction == 1.0


def test_free_protocol_occlusion_aware_masks(pool, bgs):
    cfg = SceneConfig(free_scale=(0.45, 0.75), free_sounding=(2, 3), free_silent=(1, 2))  # crowded: overlaps
    occluded = 0
    for index in range(12):
        s = compose_scene(pool, bgs, "free", seed=3, split="val", index=index, config=cfg, keep_alpha=True)
        assert s.image.shape == (448, 448, 3)
        assert 3 <= len(s.objects) <= 5 and len({o.label for o in s.objects}) == len(s.objects)
        assert sorted(o.paste_order for o in s.objects) == list(range(len(s.objects)))
        _check_scene_geometry(s, pool)
        for o in s.objects:
            full = o.alpha > 0.5
            assert o.full_area == int(full.sum())
            assert not (o.mask & ~full).any()  # the visible mask is part of the object's own alpha
            # a pixel covered opaquely by a later paste is never in the mask
            for p in s.objects:
                if p.paste_order > o.paste_order:
                    assert not (o.mask & (p.alpha == 1.0)).any()
            if o.visible_fraction < 1.0:
                occluded += 1
    assert occluded >= 3  # the test did exercise occlusion


# --------------------------------------------------------------------------------------------
# scenes: audio


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mixture_is_exact_sum_of_level_matched_stems(pool, bgs, protocol):
    cfg = SceneConfig()
    for index in range(3):
        s = compose_scene(pool, bgs, protocol, seed=11, split="train", index=index, config=cfg)
        snd = [o for o in s.objects if o.sounding]
        assert s.stems.shape == (len(snd), 3 * SR) and s.mixture.shape == (3 * SR,)
        assert s.stems.dtype == np.float32 and s.mixture.dtype == np.float32
        assert np.array_equal(s.mixture, mix_waveform_sum(list(s.stems)))
        assert np.array_equal(s.mixture.astype(np.float64), s.stems.astype(np.float64).sum(axis=0))
        assert np.abs(s.mixture).max() <= cfg.max_peak + 1e-4
        assert sorted(o.stem_index for o in snd) == list(range(len(snd)))
        assert all(o.stem_index is None and o.gain is None for o in s.objects if not o.sounding)
        for o in snd:  # every stem at the same active level (before the shared headroom gain)
            level = 20 * np.log10(active_rms(s.stems[o.stem_index]) / s.headroom_gain)
            assert abs(level - cfg.target_rms_dbfs) < 0.05
            assert o.looped == (CLASSES[o.label][3] < 3.0)


def _band_db(x: np.ndarray, freq: float) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    f = np.fft.rfftfreq(len(x), 1 / SR)
    band = spec[(f > freq - 15) & (f < freq + 15)].max()
    return 20 * np.log10(band / spec.max() + 1e-12)


@pytest.mark.parametrize("protocol", ["grid", "free"])
def test_silent_objects_contribute_no_audio(pool, bgs, protocol):
    cfg = SceneConfig(free_silent=(1, 2))
    for index in range(4):
        s = compose_scene(pool, bgs, protocol, seed=2, split="test", index=index, config=cfg)
        silent = [o for o in s.objects if not o.sounding]
        assert silent
        for o in s.objects:
            level = _band_db(s.mixture, _tone_of(o.label))
            if o.sounding:
                assert level > -12, (o.label, level)
            else:
                assert level < -60, (o.label, level)


# --------------------------------------------------------------------------------------------
# splits


def test_splits_are_disjoint_seed_ranges(pool, bgs):
    ranges = sorted((SPLIT_BASE[s], SPLIT_BASE[s] + 10_000_000) for s in SPLITS)
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for index in range(8):
            s = compose_scene(pool, bgs, "solo", seed=0, split=split, index=index)
            assert s.scene_id == SPLIT_BASE[split] + index
            h = hashlib.sha256(s.image.tobytes() + s.mixture.tobytes()).hexdigest()
            assert h not in seen, (split, index, seen.get(h))
            seen[h] = f"{split}/{index}"
    with pytest.raises(ValueError, match="scene index"):
        scene_rng(0, "solo", "train", 10_000_000)
    with pytest.raises(ValueError, match="unknown split"):
        scene_rng(0, "solo", "holdout", 0)


def test_openset_split_partitions_classes(pool, bgs):
    heard, unheard = openset_partition(pool.category_of, seed=0)
    assert set(heard) | set(unheard) == set(pool.labels) and not set(heard) & set(unheard)
    assert abs(len(heard) - len(unheard)) <= 1
    assert openset_partition(pool.category_of, seed=0) == (heard, unheard)
    assert openset_partition(pool.category_of, seed=1) != (heard, unheard) or len(pool.labels) < 4
    # stratified: a category with two or more labels is on both sides
    cats = {"a": "x", "b": "x", "c": "x", "d": "y", "e": "y", "f": "z"}
    h, u = openset_partition(cats, seed=3)
    for c in ("x", "y"):
        labs = {k for k, v in cats.items() if v == c}
        assert labs & set(h) and labs & set(u)
    assert split_labels(pool, "test") == pool.labels
    cfg = SceneConfig(free_sounding=(1, 2), free_silent=(1, 2))
    for split, allowed in (("openset-train", heard), ("openset-val", heard),
                           ("openset-test-heard", heard), ("openset-test-unheard", unheard)):
        assert split_labels(pool, split) == allowed
        for index in range(4):
            s = compose_scene(pool, bgs, "free", seed=0, split=split, index=index, config=cfg)
            assert {o.label for o in s.objects} <= set(allowed)  # silent objects too
    small = PairPool(pool.items[:3], pool.sample_rate)
    with pytest.raises(ValueError, match="need 4 different classes but the split's pool has only 3"):
        compose_scene(small, bgs, "grid", seed=0, split="test", index=0)


# --------------------------------------------------------------------------------------------
# on disk


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rebuild_is_byte_identical_and_roundtrips(pool, bgs, tmp_path):
    kw = dict(protocol="free", split="test", count=4, seed=7, progress=False, sources=[{"folder": "synthetic"}])
    a = tmp_path / "a"
    build_dataset(a, pool, bgs, **kw)
    build_dataset(tmp_path / "b", pool, bgs, **kw)
    ha, hb = _tree_hashes(a), _tree_hashes(tmp_path / "b")
    assert ha == hb and len(ha) >= 4 * 5 + 1
    # a scene does not depend on which other scenes were built with it
    build_dataset(tmp_path / "c", pool, bgs, **{**kw, "count": 2}, first_index=2)
    hc = _tree_hashes(tmp_path / "c")
    for name, h in hc.items():
        if name.startswith("scenes/"):
            assert ha[name] == h
    # the index records what was built
    idx = read_index(a)
    assert idx["builder_version"] and idx["seed"] == 7 and idx["protocol"] == "free" and idx["split"] == "test"
    assert idx["scenes"] == ["000000", "000001", "000002", "000003"]
    assert idx["sources"] == [{"folder": "synthetic"}] and "user-supplied" in idx["licenses"]
    assert set(idx["openset"]["heard"]) | set(idx["openset"]["unheard"]) == set(pool.labels)
    assert idx["files"] == {k: v for k, v in ha.items() if k.startswith("scenes/")}
    # the files hold the scene: masks, boxes, audio
    s = compose_scene(pool, bgs, "free", seed=7, split="test", index=2)
    r = read_scene(a, 2)
    ann = r["annotation"]
    assert np.array_equal(r["image"], s.image)
    assert r["masks"].shape == (len(s.objects),) + s.image.shape[:2]
    for o, m, jo in zip(s.objects, r["masks"], ann["objects"]):
        assert np.array_equal(m, o.mask) and jo["box_xyxy"] == list(o.box) and jo["label"] == o.label
        assert jo["sounding"] == o.sounding and jo["mask_value"] == o.index + 1
    assert np.array_equal(r["mixture"], s.mixture) and np.array_equal(r["stems"], s.stems)
    mix16 = sf.read(str(a / "scenes" / ann["mixture"]), dtype="int16")[0].astype(np.int32)
    stems16 = [sf.read(str(a / "scenes" / o["stem"]), dtype="int16")[0].astype(np.int32) for o in ann["objects"] if o["sounding"]]
    assert np.array_equal(mix16, np.sum(stems16, axis=0))
    assert sf.info(str(a / "scenes" / ann["mixture"])).subtype == "PCM_16"


def test_build_refuses_non_empty_out(pool, bgs, tmp_path):
    from streamloc.errors import StreamlocError

    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(StreamlocError, match="not empty"):
        build_dataset(tmp_path, pool, bgs, protocol="solo", split="val", count=1, progress=False)


def test_cli_list_build_and_errors(folder, tmp_path, capsys):
    from training.data.avpairs_cli import main

    assert main(["--no-progress", "list", "--pairs", str(folder), "--sample-rate", "16000"]) == 0
    out = capsys.readouterr().out
    assert "kept 8 pairs of 8 classes" in out
    out_dir = tmp_path / "built"
    rc = main(["--no-progress", "build", "--pairs", str(folder), "--protocol", "grid", "--split", "val",
               "--count", "2", "--seed", "1", "--out", str(out_dir), "--sample-rate", "16000", "--audio-format", "flac"])
    assert rc == 0
    idx = json.loads((out_dir / "index.json").read_text())
    assert idx["protocol"] == "grid" and idx["audio_format"] == "flac" and idx["pairs"]["kept"] == 8
    assert (out_dir / "scenes" / "000001.flac").is_file() and (out_dir / "scenes" / "000001.mask.png").is_file()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.wav").write_bytes(b"")
    assert main(["--no-progress", "list", "--pairs", str(bad)]) == 2
    assert "x: sound x.wav has no image x.png" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# fetch (offline parts) and the MIDI writer


def test_changed_package_hash_is_a_clear_error(tmp_path):
    pkg = PACKAGES["tuxpaint-stamps-default"]
    debs = deb_cache_dir(tmp_path)
    debs.mkdir(parents=True)
    (debs / deb_filename(pkg)).write_bytes(b"not the package")
    with pytest.raises(PackageHashError) as ei:
        download_deb(pkg.name, tmp_path, progress=False)
    msg = str(ei.value)
    actual = hashlib.sha256(b"not the package").hexdigest()
    assert pkg.name in msg and pkg.sha256 in msg and actual in msg
    assert "delete it" in msg and "avpairs_cli fetch" in msg
    assert ei.value.expected == pkg.sha256 and ei.value.actual == actual


def test_missing_package_is_a_clear_error(tmp_path):
    assert not is_unpacked("fluid-soundfont-gm", tmp_path)
    with pytest.raises(PackageMissingError, match=r"fluid-soundfont-gm=3\.1-5\.3 is not in the cache.*avpairs_cli fetch"):
        require_unpacked("fluid-soundfont-gm", tmp_path)
    assert deb_filename(PACKAGES["plasma-workspace-wallpapers"]) == "plasma-workspace-wallpapers_4%3a5.27.5-2_all.deb"


def test_write_midi_is_a_valid_type0_file(tmp_path):
    p = write_midi(tmp_path / "x.mid", [(0.0, 0.5, 60, 100), (0.5, 0.5, 64, 90)], program=40)
    b = p.read_bytes()
    assert b[:4] == b"MThd" and int.from_bytes(b[8:10], "big") == 0 and int.from_bytes(b[12:14], "big") == 480
    assert b[14:18] == b"MTrk" and int.from_bytes(b[18:22], "big") == len(b) - 22
    assert bytes([0xC0, 40]) in b and bytes([0x90, 60, 100]) in b and b.endswith(bytes([0xFF, 0x2F, 0x00]))
    drums = write_midi(tmp_path / "d.mid", [(0.0, 0.2, 36, 110)], program=None).read_bytes()
    assert bytes([0x99, 36, 110]) in drums and bytes([0xC9]) not in drums


# --------------------------------------------------------------------------------------------
# the real Debian sources (cache filled by `python -m training.data.avpairs_cli fetch`)


def _real_cache_or_skip():
    if not all(is_unpacked(n) for n in PACKAGES):
        pytest.skip("Debian sources not fetched (python -m training.data.avpairs_cli fetch)")


@pytest.mark.slow
def test_real_tuxpaint_pairs_and_scene(tmp_path):
    _real_cache_or_skip()
    from training.data.avpairs_sources import load_wallpapers, tuxpaint_pairs

    sel = tuxpaint_pairs(instruments=False, progress=False)
    pool, rep = load_pool(sel, sample_rate=22050, progress=False)
    counts = rep.reason_counts()
    import shutil

    # two direct pairs (washing machine, vacuum cleaner) are SVG-only stamps
    assert rep.kept_by_source()["tuxpaint/direct"] == (65 if shutil.which("rsvg-convert") else 63)
    assert counts["silent-sound"] == 4 and counts["indirect-sound"] == 9 and counts["low-sample-rate"] == 7
    assert rep.skipped_files["spoken-description (NAME_desc*.ogg)"] == 7418
    bgs, facts = load_wallpapers()
    assert len(bgs) == 10 and facts["license"].startswith("LGPL-3.0")
    idx = build_dataset(tmp_path / "g", pool, bgs, protocol="grid", split="test", count=2, progress=False)
    assert json.loads(idx.read_text())["count"] == 2
