"""Tests of training.evaluate: the predictions file format, evaluate() against the Evaluator, the
report and plots, and the command line's error paths."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from training import evaluate as E
from training.evaluate import PredictionsFormatError, Sample, evaluate, load_predictions, main, save_predictions
from training.metrics import Evaluator, GroundTruth

REPO = Path(__file__).resolve().parents[2]
S = 32  # GT size of the hand-made sets (the Evaluator takes any size; 224 is the real one)


def box(y0, y1, x0, x1, size=S):
    m = np.zeros((size, size))
    m[y0:y1, x0:x1] = 1
    return m


def blob(cy, cx, res, sigma=1.5, seed=0):
    yy, xx = np.mgrid[:res, :res]
    noise = np.random.default_rng(seed).uniform(0, 0.05, (res, res))
    return (np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)) + noise).astype(np.float32)


def single_map_set():
    """One map per sample, shared images, every sample with a source (fits every protocol)."""
    return [
        Sample([blob(2, 2, 7)], GroundTruth([box(0, 14, 0, 14)], class_ids=[0]), sample_id="a"),
        Sample([blob(10, 3, 14, seed=1)], GroundTruth([box(16, 32, 0, 12)], class_ids=[1]), sample_id="b"),
        Sample([blob(3, 3, 7, seed=2)], GroundTruth([box(20, 30, 20, 30)], class_ids=[0]), sample_id="c"),
        Sample([np.ones((7, 7), np.float32)], GroundTruth([box(4, 28, 4, 28)], class_ids=[2]), sample_id="d"),
    ]


def mixed_set():
    """No map, extra maps, two sources, stacked canvas, silent masks, a source-less sample."""
    two = GroundTruth([box(0, 12, 0, 12), box(18, 32, 18, 32)], class_ids=[0, 1], silent_masks=[box(0, 8, 24, 32)])
    stacked = GroundTruth([box(0, 16, 0, 16), box(10, 30, 10, 30)], class_ids=[2, 1], stacked=True,
                          silent_masks=[np.zeros((2 * S, S))])
    canvas0 = np.zeros((14, 7), np.float32)
    canvas0[:7] = blob(2, 2, 7)
    canvas1 = np.zeros((14, 7), np.float32)
    canvas1[7:] = blob(4, 4, 7, seed=3)
    return [
        Sample([blob(5, 5, 7, seed=4), blob(1, 1, 7, seed=5)], two, map_class_ids=[1, 0], sample_id="swapped"),
        Sample([], GroundTruth([box(8, 24, 8, 24)], class_ids=[1]), map_class_ids=[], sample_id="nomap"),
        Sample([blob(2, 2, 7), blob(5, 5, 7, seed=6), blob(3, 5, 7, seed=7)],
               GroundTruth([box(0, 16, 0, 16)], class_ids=[0]), map_class_ids=[0, 2, 1], sample_id="extra"),
        Sample([canvas1, canvas0], stacked, map_class_ids=[1, 2], sample_id="stacked"),
        Sample([blob(3, 3, 7, seed=8)], GroundTruth([], silent_masks=[box(0, 10, 0, 10)]),
               map_class_ids=[2], sample_id="empty"),
        Sample([blob(6, 6, 14, seed=9)],
               GroundTruth([box(8, 28, 8, 28)], class_ids=[2], silent_masks=[box(0, 6, 0, 6)]),
               map_class_ids=[2], sample_id="silent"),
    ]


def direct(protocol, pairs, **opts):
    ev = Evaluator(protocol, size=S, **opts)
    for maps, gt in pairs:
        ev.add(maps, gt)
    return json.loads(json.dumps(E._jsonable(ev.summary())))


def same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, float) and isinstance(y, float):
            assert x == y or (math.isnan(x) and math.isnan(y)), k
        else:
            assert x == y, k


# ----------------------------------------------------------------------------- file format


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    samples = mixed_set()
    samples[0].image = rng.integers(0, 255, (S, S, 3), dtype=np.uint8)
    samples[3].image = rng.integers(0, 255, (2 * S, S, 3), dtype=np.uint8)
    samples[5].gt.masks[0][0, 0] = 0.5  # consensus-style weight survives
    path = tmp_path / "p.npz"
    sha = save_predictions(path, samples, size=S, class_names=["a", "b", "c"])

    with np.load(path, allow_pickle=False) as npz:  # plain arrays, no pickle
        assert all(npz[k].dtype != object for k in npz.files)
        assert str(npz["format"]) == E.FORMAT and int(npz["version"]) == 1

    preds = load_predictions(path)
    assert preds.size == S and preds.class_names == ["a", "b", "c"] and preds.sha256 == sha
    assert len(preds) == len(samples)
    for a, b in zip(samples, preds.samples):
        assert a.sample_id == b.sample_id
        assert len(a.maps) == len(b.maps)
        for m, n in zip(a.maps, b.maps):
            assert m.shape == n.shape and np.array_equal(m, n) and n.dtype == np.float32
        assert (a.map_class_ids or []) == (b.map_class_ids or [])
        assert len(a.gt.masks) == len(b.gt.masks)
        assert all(np.array_equal(m, n) for m, n in zip(a.gt.masks, b.gt.masks))
        assert (a.gt.class_ids or []) == (b.gt.class_ids or [])
        assert a.gt.stacked == b.gt.stacked and a.gt.num_sources == b.gt.num_sources
        assert [m.shape for m in a.gt.silent_masks] == [m.shape for m in b.gt.silent_masks]
        assert all(np.array_equal(m, n) for m, n in zip(a.gt.silent_masks, b.gt.silent_masks))
        if a.image is None:
            assert b.image is None
        else:
            assert np.array_equal(a.image, b.image)

    # deterministic bytes; the in-memory hash equals the file's
    assert save_predictions(tmp_path / "q.npz", preds) == sha
    mem = E._load_source(E.Predictions(samples=preds.samples, size=S, class_names=["a", "b", "c"]))
    assert mem.sha256 == sha and mem.content_sha256 == preds.content_sha256


def test_npz_minimal_layout_loads(tmp_path):
    path = tmp_path / "min.npz"
    save_predictions(path, [([blob(1, 1, 4)], GroundTruth([box(0, 4, 0, 4)]))], size=S)
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == set(E._REQUIRED_KEYS) | {"num_sources"}
    s = load_predictions(path).samples[0]
    assert s.gt.class_ids is None and s.map_class_ids is None and s.image is None and s.gt.silent_masks == []


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.pop("masks"), "missing arrays"),
        (lambda a: a.update(format=np.array("other")), "format"),
        (lambda a: a.update(version=np.array(7)), "unsupported version"),
        (lambda a: a.update(map_index=np.array([0, 5])), "map_index"),
        (lambda a: a.update(map_data=a["map_data"][:-1]), "map_data holds"),
        (lambda a: a.update(map_data=np.full_like(a["map_data"], np.nan)), "NaN"),
        (lambda a: a.update(masks=np.zeros((1, 8, 8), np.float32)), "masks must have shape"),
        (lambda a: a.update(class_ids=np.array([-1])), "class_ids"),
    ],
)
def test_malformed_arrays_rejected(tmp_path, mutate, message):
    arrays = E.predictions_to_arrays([([blob(1, 1, 4)], GroundTruth([box(0, 4, 0, 4)], class_ids=[0]))], size=S)
    mutate(arrays)
    path = tmp_path / "bad.npz"
    with open(path, "wb") as f:
        E._write_npz(f, arrays)
    with pytest.raises(PredictionsFormatError, match=message):
        load_predictions(path)


# ----------------------------------------------------------------------------- evaluate == Evaluator


@pytest.mark.parametrize("protocol", E.PROTOCOL_ORDER)
def test_single_map_set_matches_evaluator(protocol):
    samples = single_map_set()
    report = evaluate(samples_with_size(samples), protocol, progress=False)
    entry = report["protocols"][protocol]
    same(entry["summary"], direct(protocol, [(s.maps, s.gt) for s in samples]))
    assert entry["counts"] == {"evaluated": 4, "skipped": 0, "skipped_reasons": {}, "adapted": 0, "adapted_reasons": {}}
    if protocol != "avgn":  # the 21-point curve integrates to the reported AUC
        assert entry["curve"]["area"] == pytest.approx(entry["summary"]["auc"], abs=1e-12)


def samples_with_size(samples, class_names=None):
    return E.Predictions(samples=samples, size=S, class_names=class_names)


@pytest.mark.parametrize("protocol", ["noprior", "streamloc"])
def test_native_protocols_take_samples_as_they_are(protocol):
    samples = mixed_set()
    report = evaluate(samples_with_size(samples), protocol, progress=False, per_sample=True)
    same(report["protocols"][protocol]["summary"], direct(protocol, [(s.maps, s.gt) for s in samples]))
    per = report["protocols"][protocol]["per_sample"]
    assert per[1] == ([] if protocol == "noprior" else [0.0])  # no map: dropped vs scored 0


def test_noprior_resizes_maps_of_different_shapes():
    gt = GroundTruth([box(0, 12, 0, 12), box(18, 32, 18, 32)])
    samples = [Sample([blob(5, 5, 14, seed=4), blob(1, 1, 7, seed=5)], gt)]
    report = evaluate(samples_with_size(samples), ["noprior", "streamloc"], progress=False)
    common = [samples[0].maps[0], E._resize(samples[0].maps[1], (14, 14), "cv2_cubic")]
    same(report["protocols"]["noprior"]["summary"], direct("noprior", [(common, gt)]))
    assert report["protocols"]["noprior"]["counts"]["adapted"] == 1
    same(report["protocols"]["streamloc"]["summary"], direct("streamloc", [(samples[0].maps, gt)]))


def test_adaptations_for_single_map_protocols():
    samples = mixed_set()
    report = evaluate(samples_with_size(samples), ["ezvsl", "avgn", "dsol"], progress=False,
                      options={"dsol": {"class_aware": False}})
    flat = np.zeros((S, S), np.float32)
    single = [s for s in samples if not s.gt.stacked]
    merged = [([E._merge_max(s.maps)] if s.maps else [flat], s.gt) for s in single]
    same(report["protocols"]["ezvsl"]["summary"], direct("ezvsl", merged))
    same(report["protocols"]["dsol"]["summary"], direct("dsol", merged))
    # AVGN: class-prompted slots (the swapped sample is put back in source order), flat when missing
    by_class = []
    for s in single:
        if s.gt.masks:
            slots = []
            unused = list(range(len(s.maps)))
            for c in s.gt.class_ids:
                hit = next((r for r in unused if s.map_class_ids[r] == c), None)
                if hit is not None:
                    unused.remove(hit)
                slots.append(flat if hit is None else s.maps[hit])
        else:
            slots = s.maps[:1]
        by_class.append((slots, s.gt))
    assert by_class[0][0][0] is samples[0].maps[1]
    same(report["protocols"]["avgn"]["summary"], direct("avgn", by_class))
    c = report["protocols"]["ezvsl"]["counts"]
    assert c["skipped_reasons"] == {"stacked sample (single-image protocol)": 1}
    assert c["adapted_reasons"] == {"no map -> flat zero map": 1, "several maps -> pixel-wise max": 2}
    avgn_reasons = report["protocols"]["avgn"]["counts"]["adapted_reasons"]
    assert avgn_reasons == {"extra maps dropped": 1, "missing slot -> flat map": 1}

    skipped = evaluate(samples_with_size(samples), "ezvsl", adapt="skip", progress=False)["protocols"]["ezvsl"]
    assert skipped["counts"]["evaluated"] == 2 and skipped["counts"]["skipped"] == 4


def test_dsol_class_aware_matches_evaluator():
    samples = mixed_set()
    report = evaluate(samples_with_size(samples), "dsol", progress=False)
    entry = report["protocols"]["dsol"]
    assert entry["options"]["class_aware"] is True
    pairs = []
    for s in samples:
        if s.gt.stacked:
            continue
        gt = s.gt if s.gt.class_ids is not None else GroundTruth([], class_ids=[], silent_masks=s.gt.silent_masks)
        maps = []
        for c in range(3):
            mine = [m for m, k in zip(s.maps, s.map_class_ids) if k == c]
            maps.append(E._merge_sum(mine) if mine else np.zeros((S, S), np.float32))
        pairs.append((maps, gt))
    same(entry["summary"], direct("dsol", pairs, cluster_of_class=[0, 1, 2]))
    assert entry["summary"]["n_skipped"] == 1  # the source-less sample


def test_plain_pairs_infer_the_gt_size():
    pairs = [(s.maps, s.gt) for s in single_map_set()]
    report = evaluate(pairs, "ezvsl", progress=False)
    assert report["input"]["size"] == S and report["input"]["path"] is None and len(report["input"]["sha256"]) == 64
    same(report["protocols"]["ezvsl"]["summary"], direct("ezvsl", pairs))


def test_evaluator_options_are_passed():
    samples = single_map_set()
    a = evaluate(samples_with_size(samples), "dsol", progress=False, options={"dsol": {"t": 0.1}})
    same(a["protocols"]["dsol"]["summary"], direct("dsol", [(s.maps, s.gt) for s in samples], t=0.1))
    assert a["protocols"]["dsol"]["options"]["t"] == 0.1
    with pytest.raises(E.EvaluationError, match="unknown Evaluator options"):
        evaluate(samples_with_size(samples), "ezvsl", progress=False, options={"ezvsl": {"bogus": 1}})
    with pytest.raises(E.EvaluationError, match="unknown protocol"):
        evaluate(samples_with_size(samples), ["streamloc", "lvs"], progress=False)


# ----------------------------------------------------------------------------- report and plots


def test_report_json_and_plots(tmp_path):
    samples = mixed_set() + single_map_set()
    for s in samples[-4:]:
        s.map_class_ids = list(s.gt.class_ids)
    for i, s in enumerate(samples):
        if i % 2 == 0 and not s.gt.stacked:
            s.image = np.full((S, S, 3), 40 * (i % 5), np.uint8)
    path = tmp_path / "preds.npz"
    sha = save_predictions(path, samples, size=S, class_names=["zero", "one", "two"])
    out = tmp_path / "out"
    ret = evaluate(path, "all", out, plots=True, progress=False)

    text = (out / "report.json").read_text()
    report = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert report == ret
    assert report["format"] == "streamloc-eval-report"
    assert report["input"]["sha256"] == sha and report["input"]["n_samples"] == len(samples)
    assert report["input"]["sources_per_sample"] == {"0": 1, "1": 7, "2": 2}
    assert {"python", "numpy", "scipy", "torch", "opencv", "matplotlib", "streamloc"} <= set(report["versions"])
    assert list(report["protocols"]) == list(E.PROTOCOL_ORDER)
    for protocol, entry in report["protocols"].items():
        assert {"description", "adaptation", "options", "summary", "counts", "curve"} <= set(entry)
        assert entry["summary"]["protocol"] == protocol
        assert entry["counts"]["evaluated"] + entry["counts"]["skipped"] == len(samples)
        assert len(entry["curve"]["thresholds"]) == 21 and len(entry["curve"]["success"]) == 21
    table = report["protocols"]["streamloc"]["per_class"]
    assert [r["class_name"] for r in table] == ["zero", "one", "two"]
    assert sum(r["n_sources"] for r in table) == report["input"]["n_sources"]
    assert "per_class" in report["protocols"]["avgn"] and "per_class_note" in report["protocols"]["ezvsl"]
    assert report["protocols"]["streamloc"]["summary"]["counting_confusion"][1][0] == 1  # the no-map sample

    expected = {"success_curve.png", "per_class.png"} | {f"examples_{p}.png" for p in E.PROTOCOL_ORDER}
    assert set(report["plots"]) == expected
    for name in expected:
        f = out / name
        assert f.stat().st_size > 1000
        img = cv2.imread(str(f))
        assert img is not None and img.ndim == 3 and min(img.shape[:2]) > 100


def test_plots_without_classes_or_images(tmp_path):
    samples = [Sample(s.maps, GroundTruth(s.gt.masks)) for s in single_map_set()]
    report = evaluate(samples_with_size(samples), ["ezvsl", "streamloc"], tmp_path, progress=False, n_examples=2)
    assert set(report["plots"]) == {"success_curve.png", "examples_ezvsl.png", "examples_streamloc.png"}
    assert "per_class" not in report["protocols"]["streamloc"]
    assert all(cv2.imread(str(tmp_path / p)) is not None for p in report["plots"])
    assert not (tmp_path / "per_class.png").exists()


# ----------------------------------------------------------------------------- command line


def run_main(capsys, argv):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_success(tmp_path, capsys):
    path = tmp_path / "p.npz"
    save_predictions(path, single_map_set(), size=S)
    code, out, err = run_main(capsys, [str(path), "--protocol", "ezvsl,streamloc", "--out", str(tmp_path / "o"),
                                       "--no-progress", "--no-plots", "--option", "streamloc.upsample=cv2_cubic"])
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert list(report["protocols"]) == ["ezvsl", "streamloc"] and report["plots"] == []
    assert report["protocols"]["streamloc"]["options"]["upsample"] == "cv2_cubic"
    assert "streamloc: n_samples=4" in out


def _garbage(p: Path) -> Path:
    p.write_bytes(b"this is not a zip file at all")
    return p


def _pickled(p: Path) -> Path:
    with zipfile.ZipFile(p, "w") as zf:
        with zf.open("format.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return p


def _wrong_keys(p: Path) -> Path:
    np.savez(p, foo=np.zeros(3))
    return p


@pytest.mark.parametrize(
    "make, args, needle",
    [
        (lambda d: d / "missing.npz", [], "not found"),
        (lambda d: _garbage(d / "g.npz"), [], "not a readable .npz"),
        (lambda d: _pickled(d / "pk.npz"), [], "not a readable .npz"),
        (lambda d: _wrong_keys(d / "k.npz"), [], "missing arrays"),
        (None, ["--protocol", "lvs"], "unknown protocol 'lvs'"),
        (None, ["--option", "dsol.t"], "PROTOCOL.KEY=VALUE"),
        (None, ["--protocol", "dsol", "--option", "dsol.bogus=1"], "unknown Evaluator options"),
        (None, ["--option", "dsol.t=0.2"], "not requested"),
        (None, ["--adapt", "maybe"], "adapt"),
        (None, ["--bogus-flag"], "unrecognized arguments"),
    ],
)
def test_cli_errors_one_line_exit_2(tmp_path, capsys, make, args, needle):
    if make is None:
        path = tmp_path / "ok.npz"
        save_predictions(path, single_map_set(), size=S)
    else:
        path = make(tmp_path)
    code, out, err = run_main(capsys, [str(path), "--no-progress", *args])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("python -m training.evaluate: error: ") and needle in lines[0]


def test_cli_no_arguments_and_prog(capsys):
    code, _, err = run_main(capsys, [])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert main(["x.npz"], prog="streamloc eval") == 2
    assert capsys.readouterr().err.startswith("streamloc eval: error: predictions file not found")


def test_module_entry_point_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "training.evaluate", str(tmp_path / "nope.npz")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr
