"""Audio windows, frames and the torch Datasets on tiny generated media laid out as the official
projects expect (annotations are the real files)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from training.data import (
    MUSIC_CLASSES,
    FlickrSoundNetDataset,
    MediaError,
    MusicAvgnDataset,
    MusicDsolDataset,
    VggsoundMixtureDataset,
    VggssDataset,
    collate_samples,
    parse_avgn_music_duet,
    parse_avgn_music_solo,
    parse_vggss_json,
    read_flickr_test_csv,
    read_pairing_csv,
    union_mask,
)
from training.data.audio import (
    decode_audio,
    load_audio_window,
    load_frame,
    tile_to_length,
    window_start,
)

RNG = np.random.default_rng(1)


def write_frame(path: Path, h: int = 24, w: int = 32) -> np.ndarray:
    """A small random BGR jpg; returns the RGB image OpenCV decodes from it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return cv2.imread(str(path))[:, :, ::-1]


def write_sine(path: Path, sr: int, seconds: float, freq: float = 440.0, subtype: str = "FLOAT") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * sr))) / sr
    x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    sf.write(str(path), x, sr, subtype=subtype)
    return sf.read(str(path), dtype="float32")[0]


# ------------------------------------------------------------------------------------ windows


def test_window_start_protocols():
    # EZ-VSL: max(dur/2 - 1.5, 0) s; 10 s @ 16 kHz → 3.5 s
    assert window_start(160000, 16000, "ezvsl") == 56000
    # 10.5 s @ 22.05 kHz: EZ-VSL centre of the file, NoPrior centre of the whole seconds
    n = int(10.5 * 22050)
    assert window_start(n, 22050, "ezvsl") == int((10.5 / 2 - 1.5) * 22050) == 82687
    assert window_start(n, 22050, "noprior_test") == int((10 // 1 / 2 - 1.5) * 22050) == 77175
    assert window_start(n, 22050, "noprior_train") == 0
    assert window_start(16000, 16000, "ezvsl") == 0  # shorter than 3 s
    assert window_start(16000, 16000, "noprior_test") == 0  # clamped (official would be negative)
    with pytest.raises(ValueError, match="unknown window protocol"):
        window_start(10, 16000, "middle")


def test_tile_to_length_literal():
    x = np.arange(7, dtype=np.float32)
    np.testing.assert_array_equal(tile_to_length(x, 17), np.tile(x, int(17 / 7) + 1)[:17])
    np.testing.assert_array_equal(tile_to_length(x, 5), x[:5])


def test_load_audio_window_soundfile_exact(tmp_path):
    x = write_sine(tmp_path / "a.wav", 16000, 10.0)
    w, sr = load_audio_window(tmp_path / "a.wav")
    assert sr == 16000 and w.dtype == np.float32
    np.testing.assert_array_equal(w, x[56000:104000])
    w, _ = load_audio_window(tmp_path / "a.wav", protocol="noprior_train")
    np.testing.assert_array_equal(w, x[:48000])
    x = write_sine(tmp_path / "b.wav", 22050, 10.5)
    w, sr = load_audio_window(tmp_path / "b.wav", protocol="noprior_test")
    np.testing.assert_array_equal(w, x[77175:77175 + 66150])
    w, _ = load_audio_window(tmp_path / "b.wav", start_s=2.0, duration=1.0)
    np.testing.assert_array_equal(w, x[44100:66150])


def test_short_file_is_tiled(tmp_path):
    x = write_sine(tmp_path / "short.flac", 16000, 1.2, subtype="PCM_16")
    w, sr = load_audio_window(tmp_path / "short.flac")
    assert len(w) == 48000
    np.testing.assert_array_equal(w, np.tile(x, 48000 // 19200 + 1)[:48000])


@pytest.mark.parametrize("sr_in", [22050, 44100])
def test_resampled_window_matches_analytic_sine(tmp_path, sr_in):
    write_sine(tmp_path / "s.wav", sr_in, 5.0, freq=440.0)
    w, sr = load_audio_window(tmp_path / "s.wav", sample_rate=16000)
    assert sr == 16000 and len(w) == 48000 and w.dtype == np.float32
    t0 = int((2.5 - 1.5) * sr_in) / sr_in
    ref = 0.5 * np.sin(2 * np.pi * 440.0 * (t0 + np.arange(48000) / 16000))
    np.testing.assert_allclose(w[200:-200], ref[200:-200], atol=2e-3)


def test_stereo_is_averaged_and_pyav_path(tmp_path):
    import av

    sr = 22050
    t = np.arange(4 * sr) / sr
    left = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    right = (0.25 * np.sin(2 * np.pi * 700 * t)).astype(np.float32)
    sf.write(str(tmp_path / "st.wav"), np.stack([left, right], 1), sr, subtype="FLOAT")
    x, r = decode_audio(tmp_path / "st.wav")
    assert r == sr
    np.testing.assert_allclose(x, (left + right) / 2, atol=1e-7)
    # the same stereo signal in a Matroska container (16-bit PCM) goes through PyAV
    with av.open(str(tmp_path / "st.mka"), "w", format="matroska") as c:
        s = c.add_stream("pcm_s16le", rate=sr, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.stack([left, right]), format="fltp", layout="stereo")
        frame.sample_rate = sr
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    w, r = load_audio_window(tmp_path / "st.mka")
    ref, _ = load_audio_window(tmp_path / "st.wav")
    assert r == sr and len(w) == 3 * sr
    np.testing.assert_allclose(w, ref, atol=1e-4)


def test_audio_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_audio_window(tmp_path / "none.wav", what="audio of sample 'x'")
    assert str(tmp_path / "none.wav") in str(info.value) and "sample 'x'" in str(info.value)
    (tmp_path / "junk.wav").write_bytes(b"not a wav file at all" * 10)
    with pytest.raises(MediaError, match="junk.wav"):
        load_audio_window(tmp_path / "junk.wav")
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(MediaError, match="junk.mp4"):
        load_audio_window(tmp_path / "junk.mp4")
    write_sine(tmp_path / "one.wav", 16000, 1.0)
    with pytest.raises(MediaError, match="beyond the end"):
        load_audio_window(tmp_path / "one.wav", start_s=1.0, duration=1.0)


def test_load_frame_rgb_and_errors(tmp_path):
    bgr = np.zeros((16, 16, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.jpg"), bgr)
    rgb = load_frame(tmp_path / "red.jpg")
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 16, 3)
    assert rgb[..., 0].min() > 240 and rgb[..., 2].max() < 15
    assert load_frame(tmp_path / "red.jpg", 8).shape == (8, 8, 3)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_frame(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(MediaError, match="bad.jpg"):
        load_frame(tmp_path / "bad.jpg")


# ------------------------------------------------------------------------------------ datasets


VGGSS_IDS = ("zpWuikVorYg_000032", "gEvCUcZ6w88_000030", "Db6Hjt0x28k_000056")
RATES = (16000, 22050, 44100)


@pytest.fixture()
def vggss_root(tmp_path):
    root = tmp_path / "vggss"
    frames, waves = {}, {}
    for sid, sr in zip(VGGSS_IDS, RATES):
        frames[sid] = write_frame(root / "frames" / f"{sid}.jpg")
        waves[sid] = (sr, write_sine(root / "audio" / f"{sid}.wav", sr, 4.0, freq=330.0))
    return root, frames, waves


def test_vggss_dataset_items(vggss_root, vggss):
    root, frames, waves = vggss_root
    ds = VggssDataset(root, vggss, ids=VGGSS_IDS, sample_rate=16000)
    assert len(ds) == 3 and ds.report.n_corrupt_coordinates == 14
    for i, sid in enumerate(VGGSS_IDS):
        item = ds[i]
        assert item["id"] == sid and item["source_ids"] == (sid,)
        assert item["sample_rate"] == 16000 and item["audio"].shape == (48000,)
        assert item["audio"].dtype == np.float32
        np.testing.assert_array_equal(item["frame"], frames[sid])
        assert item["frame"].dtype == np.uint8
        assert item["masks"].shape == (1, 224, 224) and item["masks"].dtype == np.float32
        np.testing.assert_array_equal(item["masks"][0], union_mask(vggss.by_id[sid].boxes))
        name = vggss.by_id[sid].class_name
        assert item["class_names"] == (name,)
        assert item["class_ids"].tolist() == [ds.vocabulary.id(name)]
    assert ds[0]["masks"][0, 56:168, 90:134].all() and ds[0]["masks"].sum() == 112 * 44
    # native rate (EZ-VSL): no resampling, int(3·sr) samples of the centred window
    native = VggssDataset(root, vggss, ids=VGGSS_IDS)
    item = native[2]
    sr, x = waves[VGGSS_IDS[2]]
    assert item["sample_rate"] == sr == 44100
    np.testing.assert_array_equal(item["audio"], x[int(0.5 * sr):int(0.5 * sr) + 3 * sr])


def test_vggss_dataset_missing_media_is_an_error_never_a_substitute(vggss_root, vggss):
    root, _, _ = vggss_root
    (root / "audio" / f"{VGGSS_IDS[1]}.wav").unlink()
    (root / "frames" / f"{VGGSS_IDS[2]}.jpg").unlink()
    ds = VggssDataset(root, vggss, ids=VGGSS_IDS)
    assert ds[0]["id"] == VGGSS_IDS[0]
    with pytest.raises(FileNotFoundError) as info:
        ds[1]
    assert str(root / "audio" / f"{VGGSS_IDS[1]}.wav") in str(info.value) and VGGSS_IDS[1] in str(info.value)
    with pytest.raises(FileNotFoundError, match=f"{VGGSS_IDS[2]}.jpg"):
        ds[2]
    with pytest.raises(ValueError, match="not in"):
        VggssDataset(root, vggss, ids=["nope_000000"])


def test_dataloader_batches(vggss_root, vggss):
    import torch
    from torch.utils.data import DataLoader

    root, _, _ = vggss_root
    ds = VggssDataset(root, vggss, ids=VGGSS_IDS, sample_rate=16000, frame_size=32)
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["audio"].shape == (3, 48000) and batch["frame"].shape == (3, 32, 32, 3)
    assert batch["masks"].shape == (3, 1, 224, 224) and batch["frame"].dtype == torch.uint8
    assert list(batch["id"]) == list(VGGSS_IDS)
    clone = pickle.loads(pickle.dumps(ds))  # spawn-started DataLoader workers pickle the dataset
    np.testing.assert_array_equal(clone[1]["audio"], ds[1]["audio"])
    b2 = collate_samples([ds[0], ds[1]])
    assert b2["audio"].shape == (2, 48000) and b2["sample_rate"].tolist() == [16000, 16000]
    assert b2["id"] == list(VGGSS_IDS[:2])


FLICKR_XML = (
    "<annotation><object><bbox><n>1</n><xmin>0</xmin><ymin>32</ymin><xmax>128</xmax><ymax>160</ymax></bbox>"
    "</object><object><bbox><n>2</n><xmin>64</xmin><ymin>64</ymin><xmax>200</xmax><ymax>256</ymax></bbox>"
    "</object></annotation>"
)


def test_flickr_dataset(meta, tmp_path):
    ids = read_flickr_test_csv(meta / "ezvsl_flickr_test.csv")[:2]
    root = tmp_path / "flickr"
    (root / "Annotations").mkdir(parents=True)
    for sid in ids:
        (root / "Annotations" / f"{sid}.xml").write_text(FLICKR_XML)
        write_frame(root / "frames" / f"{sid}.jpg")
        write_sine(root / "audio" / f"{sid}.wav", 22050, 2.0)  # shorter than 3 s: tiled
    ds = FlickrSoundNetDataset(root, ids=ids, sample_rate=22050)
    item = ds[1]
    assert item["id"] == ids[1] and item["class_ids"].tolist() == [-1]
    assert item["audio"].shape == (66150,)
    assert set(np.unique(item["masks"])) == {0.0, 0.5, 1.0}
    assert item["masks"][0, 60, 60] == 1.0
    with pytest.raises(FileNotFoundError, match="Annotations"):
        FlickrSoundNetDataset(root, test_csv=meta / "ezvsl_flickr_test.csv")


def test_vggsound_duet_dataset(meta, vggss, tmp_path):
    rows = read_pairing_csv(meta / "avgn_vggsound_duet_test.csv", k=2)[:2]
    root = tmp_path / "vggsound"
    rates = iter(RATES * 2)
    heights = iter(range(20, 24))
    for r in rows:
        for sid in r.ids:
            write_frame(root / "frames" / f"{sid}.jpg", h=next(heights), w=30)
            write_sine(root / "audio" / f"{sid}.wav", next(rates), 3.5, freq=200 + 50 * len(sid))
    ds = VggsoundMixtureDataset(root, rows, boxes=vggss, sample_rate=16000, frame_size=32)
    item = ds[0]
    assert item["id"] == "zpWuikVorYg_000032+Rtg1SUrxOPY_000130"
    assert item["frames"].shape == (2, 32, 32, 3) and item["source_audio"].shape == (2, 48000)
    np.testing.assert_array_equal(item["audio"], item["source_audio"][0] + item["source_audio"][1])
    for s, sid in enumerate(rows[0].ids):
        np.testing.assert_array_equal(item["masks"][s], union_mask(vggss.by_id[sid].boxes))
        np.testing.assert_array_equal(item["source_audio"][s], ds._load_audio(ds.audio_path(sid), sid)[0])
    assert item["class_names"] == ("elk_bugling", "people_coughing")
    assert item["class_ids"].tolist() == [ds.vocabulary.id("elk bugling"), ds.vocabulary.id("people_coughing")]
    rms = VggsoundMixtureDataset(root, rows, boxes=vggss, sample_rate=16000, frame_size=32, mixture="rms_average")
    a = item["source_audio"].astype(np.float64)
    lit = sum(x * 0.1 / max(1e-4, np.sqrt(np.mean(x ** 2))) for x in a) / 2
    np.testing.assert_allclose(rms[0]["audio"], lit, rtol=1e-5, atol=1e-6)
    none = VggsoundMixtureDataset(root, rows, mixture="none", frame_size=32, sample_rate=16000)[1]
    assert "audio" not in none and none["source_audio"].shape == (2, 48000)
    with pytest.raises(ValueError, match="different sample rates"):
        VggsoundMixtureDataset(root, rows, frame_size=32)[0]  # 16 kHz + 22.05 kHz, native rates
    with pytest.raises(ValueError, match="have no entry"):
        VggsoundMixtureDataset(root, [rows[0], read_pairing_csv(meta / "avgn_vgginstruments_test.csv", 1)[0]],
                               boxes=vggss)
    all_rows = read_pairing_csv(meta / "avgn_vggsound_duet_test.csv", k=2)
    dropped = parse_vggss_json(meta / "ezvsl_vggss.json", policy="drop")
    d = VggsoundMixtureDataset(root, all_rows, boxes=dropped)
    gone = {"M1P1xla8rg0_000000", "MKC9LvRivTM_000030"}
    assert d.dropped_rows and all(gone.intersection(r.ids) for r in d.dropped_rows)
    assert len(d) + len(d.dropped_rows) == 5158 and not any(gone.intersection(r.ids) for r in d.rows)
    with pytest.raises(ValueError, match="frame_size"):
        VggsoundMixtureDataset(root, rows, sample_rate=16000)[0]  # frames of different sizes


def test_vgginstruments_dataset_with_mask_files(meta, tmp_path):
    rows = read_pairing_csv(meta / "avgn_vgginstruments_multi_test.csv", k=2)[:1]
    root = tmp_path / "vgginst"
    a_id, b_id = rows[0].ids
    for sid in (a_id, b_id):
        write_frame(root / "frames" / f"{sid}.jpg")
        write_sine(root / "audio" / f"{sid}.wav", 16000, 3.0)
    (root / "masks").mkdir()
    m = (RNG.random((50, 60)) > 0.5).astype(np.uint8)
    np.save(root / "masks" / f"{a_id}.npy", m)
    cv2.imwrite(str(root / "masks" / f"{b_id}.png"), m * 255)
    ds = VggsoundMixtureDataset(root, meta / "avgn_vgginstruments_multi_test.csv", k=2, masks_dir="masks")
    item = ds[0]
    exp = cv2.resize(m, (224, 224), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    np.testing.assert_array_equal(item["masks"][0], exp)
    np.testing.assert_array_equal(item["masks"][1], exp)
    assert item["class_names"] == ("accordion", "steel_guitar")
    with pytest.raises(FileNotFoundError, match="sample0001"):
        ds[1]


def test_music_avgn_dataset(meta, tmp_path):
    solo = parse_avgn_music_solo(meta / "avgn_music_solo.json")
    root = tmp_path / "music"
    entries = solo.entries[:2]
    x = {}
    for e in entries:
        write_frame(root / "frames" / f"{e.sample_id}.jpg")
        x[e.video_id] = write_sine(root / "audio" / f"{e.video_id}.wav", 22050, 8.0, freq=500)
    ds = MusicAvgnDataset(root, solo, ids=[e.sample_id for e in entries])
    item = ds[0]
    assert item["id"] == "-_-TDDxoaAc_000_00000" and item["class_names"] == ("cello",)
    assert item["class_ids"].tolist() == [MUSIC_CLASSES.index("cello")] == [2]
    # the whole-video wav, centred (AVGN): start (4 - 1.5) s
    np.testing.assert_array_equal(item["audio"], x["-_-TDDxoaAc"][55125:55125 + 66150])
    exp = np.zeros((224, 224), np.float32)
    exp[27:217, 73:126] = 1
    np.testing.assert_array_equal(item["masks"][0], exp)
    misread = MusicAvgnDataset(root, solo, ids=[e.sample_id for e in entries], box_protocol="avgn_misread")
    assert not misread[0]["masks"].any()

    duet = parse_avgn_music_duet(meta / "avgn_music_duet.json")
    e = duet[0]
    write_frame(root / "frames" / f"{e.sample_id}.jpg")
    write_sine(root / "audio" / f"{e.video_id}.wav", 44100, 4.0)
    d = MusicAvgnDataset(root, duet, ids=[e.sample_id], sample_rate=22050)
    item = d[0]
    assert item["masks"].shape == (2, 224, 224) and item["audio"].shape == (66150,)
    assert item["class_ids"].tolist() == [2, 1]  # cello, acoustic_guitar
    with pytest.raises(FileNotFoundError, match=duet[1].sample_id):
        MusicAvgnDataset(root, duet)[1]


def test_music_dsol_dataset(meta, tmp_path):
    raw = json.loads((meta / "dsol_music_duettest.json").read_text())
    keys = [
        "WkY638E5wy8_0_1000/frame_001/00044.jpg",  # two boxes, second 1
        "WkY638E5wy8_0_1000/frame_000/00000.jpg",
        "h2oiK1-8U5U_0_1000/frame_031/00951.jpg",  # no box
    ]
    ann = tmp_path / "duettest_subset.json"
    ann.write_text(json.dumps({k: raw[k] for k in keys}))
    root = tmp_path / "dsol"
    for k in keys[:2]:
        write_frame(root / "frames" / k)
    x = write_sine(root / "audio" / "WkY638E5wy8_0_1000.flac", 16000, 4.0, freq=250, subtype="PCM_16")
    ds = MusicDsolDataset(root, ann)
    assert len(ds) == 2  # the frame without boxes is skipped
    item = ds[0]
    assert item["id"] == keys[0] and item["sample_rate"] == 16000
    np.testing.assert_array_equal(item["audio"], x[16000:32000])  # the 1-s segment of second 1
    boxes = raw[keys[0]]["bbox"]
    assert item["category_ids"].tolist() == [b["category_id"] for b in boxes]
    assert item["masks"].shape == (2, 224, 224)
    for s, b in enumerate(boxes):  # DSOL's rule, literally
        x0, y0, w, h = b["normbox"]
        gt = np.zeros((224, 224), np.float32)
        gt[int(y0 * 224):int((y0 + h) * 224), int(x0 * 224):int((x0 + w) * 224)] = 1
        np.testing.assert_array_equal(item["masks"][s], gt)
    assert item["category_ids"].tolist() == [3, 8]
    assert item["class_names"] == ("acoustic_guitar", "saxophone")
    assert item["class_ids"].tolist() == [1, 6]  # positions in the sorted MUSIC-11 list
    assert len(MusicDsolDataset(root, ann, include_empty=True)) == 3
    with pytest.raises(FileNotFoundError) as info:
        MusicDsolDataset(root, ann, include_empty=True)[2]
    assert "h2oiK1-8U5U_0_1000/frame_031/00951.jpg" in str(info.value)
    write_frame(root / "frames" / keys[2])
    with pytest.raises(FileNotFoundError) as info:
        MusicDsolDataset(root, ann, include_empty=True)[2]
    assert "h2oiK1-8U5U_0_1000.flac" in str(info.value) and "h2oiK1-8U5U_0_1000.wav" in str(info.value)
    write_sine(root / "audio" / "h2oiK1-8U5U_0_1000.wav", 22050, 32.5)
    empty = MusicDsolDataset(root, ann, include_empty=True)[2]
    assert empty["masks"].shape == (0, 224, 224) and empty["audio"].shape == (16000,)
    batch = collate_samples([ds[0], empty])
    assert isinstance(batch["masks"], list) and batch["audio"].shape == (2, 16000)
