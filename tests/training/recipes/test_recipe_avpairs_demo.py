"""The demo-model recipe on a tiny synthetic pair folder: cached-feature training equals the runtime
model, the ground truth matches the scene, and prepare → train → evaluate runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
sf = pytest.importorskip("soundfile")

from training.data.avpairs import generated_backgrounds  # noqa: E402
from training.data.avpairs_sources import load_pool, user_folder_pairs  # noqa: E402
from training.recipes import avpairs_demo as R  # noqa: E402

SR = 22050
# label → (BGR colour, tone Hz): distinct colours and pitches so that pairs are learnable
PAIRS = {"apple": ((40, 40, 230), 330.0), "bell": ((60, 200, 40), 660.0), "cat": ((230, 70, 40), 990.0),
         "drum": ((30, 200, 220), 1320.0), "eel": ((200, 40, 200), 1650.0), "fox": ((200, 200, 30), 1980.0)}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    for label, (colour, hz) in PAIRS.items():
        rgba = np.zeros((96, 96, 4), np.uint8)
        cv2.circle(rgba, (48, 48), 44, (*colour, 255), -1)
        cv2.imwrite(str(root / f"{label}.png"), rgba)
        t = np.arange(int(1.5 * SR)) / SR
        sf.write(str(root / f"{label}.wav"), (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), SR)
    pool, _ = load_pool(user_folder_pairs(root), sample_rate=SR, progress=False)
    assert len(pool.labels) == len(PAIRS)
    return pool, generated_backgrounds(3, seed=2, size=(240, 320)), {"pairs": len(pool)}


def tiny_config(**kw) -> R.RecipeConfig:
    base = dict(train_scenes={"solo": 6, "duet": 4, "grid": 4, "free": 6}, val_scenes=2, test_scenes=3,
                steps=3, eval_every=2, batch_size=8, osc_warmup_steps=1, osc_weight=0.5)
    base.update(kw)
    return R.RecipeConfig(**base)


@pytest.mark.parametrize("protocol", ["solo", "duet", "grid", "free"])
def test_scene_truth_matches_the_scene(sources, protocol):
    pool, bgs, _ = sources
    scene = R.compose(pool, bgs, protocol, "test", 1, 0)
    gt = R.scene_truth(scene, size=32)
    sounding = [o for o in scene.objects if o.sounding]
    assert gt.num_sources == len(sounding) == len(gt.masks)
    assert len(gt.silent_masks) == len(scene.objects) - len(sounding)
    for o, m in zip(sounding, gt.masks):
        # literal: OpenCV's nearest neighbour takes source pixel floor(i * h / 32)
        h, w = o.mask.shape
        expected = o.mask[np.ix_(np.arange(32) * h // 32, np.arange(32) * w // 32)]
        np.testing.assert_array_equal(m > 0, expected)
    union = np.max(np.stack([*gt.masks, *gt.silent_masks]), axis=0)
    assert union.sum() == sum(m.sum() for m in [*gt.masks, *gt.silent_masks])  # disjoint


@pytest.mark.parametrize("method", R.METHODS)
def test_cached_features_give_the_runtime_outputs(sources, method, one_thread):
    """Training reads cached float16 backbone features; the maps must be the full model's."""
    from training.methods import create_method

    pool, bgs, _ = sources
    cfg = tiny_config()
    model = create_method(method, **cfg.model_options(method)).model.eval()
    scenes = [R.compose(pool, bgs, p, "val", 0, 0) for p in ("solo", "duet", "free")]
    full = R.full_outputs(model, scenes)
    feats, specs = R.encode_scenes(scenes, cfg, R._visual_encoder(), R._frontend(cfg))
    imgnet, audnet = model.imgnet, model.audnet
    with R.CachedFeatureModel(model, bf16_audio=False) as m:
        cached = R.cached_outputs(m, feats.float(), specs.float())
    assert model.imgnet is imgnet and model.audnet is audnet  # restored
    for a, b in zip(full, cached):
        for name in model.output_names:
            scale = float(np.abs(a[name]).max()) + 1e-6
            assert np.abs(a[name] - b[name]).max() / scale < 2e-2, name  # float16 cache rounding


def test_choose_thresholds_trades_ciou_against_silent_coverage():
    """One 224² scene: a sounding object (cols 0-127; its left half scores 1.0, its right half 0.45),
    a silent object (cols 192-223, a quarter of the source's area) scoring 0.5, background 0.
    Thresholds <= 0.45 cover the whole source and the silent object: cIoU = A / (A + A/4) = 0.8,
    suppression 0. Thresholds >= 0.6 cover the left half only: cIoU 0.5, suppression 1. Mean cIoU
    alone picks 0.1 (the first of the ties); the product picks 0.6."""
    from training.evaluate import Sample
    from training.metrics import GroundTruth

    score = np.zeros((224, 224), np.float32)
    score[:, :64], score[:, 64:128], score[:, 192:] = 1.0, 0.45, 0.5
    source, silent = np.zeros((224, 224)), np.zeros((224, 224))
    source[:, :128], silent[:, 192:] = 1, 1
    sample = Sample([score], GroundTruth([source], silent_masks=[silent]))
    chosen = R.choose_thresholds({"grid": {"model": [sample]}})["model"]
    assert chosen["threshold"] == 0.6 and chosen["threshold_mean_ciou"] == 0.1
    for t, (c, supp) in {"0.1": (0.8, 0.0), "0.4": (0.8, 0.0), "0.5": (0.4, 0.0), "0.6": (0.5, 1.0), "0.9": (0.5, 1.0)}.items():
        row = chosen["val"][t]
        assert (row["mean_ciou"], row["silent_suppression"]) == pytest.approx((c, supp))
        assert row["objective"] == pytest.approx(c * supp)


def test_prepare_train_evaluate_end_to_end(sources, tmp_path, one_thread):
    from streamloc.models.checkpoint import load_checkpoint, read_metadata

    pool, bgs, facts = sources
    cfg = tiny_config()
    info = R.prepare(tmp_path, cfg, progress=False, sources=sources)
    assert info["config"]["train_scenes"] == cfg.train_scenes
    for m in R.METHODS:
        res = R.train(tmp_path, m, cfg, progress=False, sources=sources)
        assert res["best_step"] in (2, 3)
        log = [json.loads(x) for x in (tmp_path / m / "train.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
        if m == "noprior":  # L_osc is off during the warm-up step, on afterwards
            assert log[0]["loss"] == pytest.approx(log[0]["avc"])
            assert log[2]["loss"] == pytest.approx(log[2]["avc"] + 0.5 * log[2]["osc"])
        meta = read_metadata(tmp_path / m / "model.safetensors")
        assert meta["provenance"]["best_step"] == res["best_step"]
        states = sorted(p.name for p in (tmp_path / m / "states").iterdir())
        assert states == ["step00002.safetensors", "step00003.safetensors"]  # every validated state
        model = load_checkpoint(tmp_path / m / "model.safetensors")
        assert model.config.freeze_visual and model.config.visual_backbone == "efficientnet_lite0"
    report = R.evaluate_all(tmp_path, tmp_path / "report", cfg, progress=False, sources=sources)
    assert report["training"]["noprior"]["chosen_on_val"]["best_step"] in (2, 3)
    groups = set(report["results"])
    assert groups == {*R.PROTOCOLS, R.MULTI}
    for name in (*R.METHODS, *R.BASELINES):
        chosen = report["thresholds_chosen_on_val"][name]
        assert chosen["threshold"] in R.THRESHOLDS and chosen["threshold_mean_ciou"] in R.THRESHOLDS
        assert set(report["results"]["grid"][name]) == set(R.RULES) == set(report["checks"])
        r = report["results"]["grid"][name]["median_rule"]
        assert r["n_sources"] == 2 * cfg.test_scenes  # grid: two sounding objects per scene
        assert 0.0 <= r["silent_suppression"] <= 1.0
    # single-map predictors always count one object
    assert report["results"]["solo"]["ezvsl"]["median_rule"]["counting_accuracy"] == 1.0
    assert report["results"]["duet"]["prior"]["median_rule"]["counting_accuracy"] == 0.0
    for f in ("report.json", "summary.md", "comparison_median_rule.png", "counting_confusion_free.png"):
        assert (tmp_path / "report" / f).stat().st_size > 0
    assert (tmp_path / "report" / "evaluator" / "noprior" / "grid" / "report.json").exists()
    small = {"ioi_rule": ("official", "paper"), "ioi_eps": (0.1, 0.5), "tau1": (0.7,), "tau2": (0.6, 0.8)}
    tuned = R.tune_ioi(tmp_path, cfg, sources=sources, grid=small)
    assert tuned["configs_tried"] == 8
    saved = json.loads((tmp_path / "noprior" / "tune_ioi.json").read_text())
    assert max(r["objective"] for r in saved["grid"]) == tuned["chosen"]["objective"]
    assert tuned["states_probed"] == 2 and set(saved["probes"]) == {"step00002.safetensors", "step00003.safetensors"}
    assert tuned["state"] == max(saved["probes"], key=lambda n: saved["probes"][n]["objective"])
    model = load_checkpoint(tmp_path / "noprior" / "model.safetensors")
    for k in small:
        assert getattr(model.config, k) == tuned["chosen"][k]
    assert read_metadata(tmp_path / "noprior" / "model.safetensors")["provenance"]["ioi_chosen_on_val"] == tuned["chosen"]
    shipped = R.ship(tmp_path, tmp_path / "report", tmp_path / "assets")
    assert load_checkpoint(shipped["checkpoint"]).method == "noprior"
    card = (tmp_path / "assets" / "noprior_avpairs.md").read_text()
    assert "python -m training.recipes.avpairs_demo train" in card and "| grid | IOI/OSC |" in card
    assert "IOI settings chosen on val" in card and '"ioi_eps"' in card
    assert card.count("--set 'steps=3'") == 2  # the tiny config's overrides, printed with both commands
    assert f"training time {report['training']['ezvsl']['train_seconds']} s" in card


def test_missing_cache_is_a_clear_error(tmp_path, sources):
    with pytest.raises(FileNotFoundError, match="run `python -m training.recipes.avpairs_demo prepare"):
        R.train(tmp_path, "noprior", tiny_config(), progress=False, sources=sources)


@pytest.mark.parametrize("rule", R.SELECTION_RULES)
def test_score_maps_agrees_with_the_evaluator(sources, rule):
    """The val scores used for model selection and IOI tuning are the ``streamloc`` protocol's
    numbers (the Evaluator is tested against literal transcriptions in tests/training)."""
    from training.metrics import Evaluator

    pool, bgs, _ = sources
    rng = np.random.default_rng(3)
    scenes = [R.compose(pool, bgs, p, "val", i, 0) for p in ("solo", "duet", "grid", "free") for i in range(3)]
    truths = [R.scene_truth(s) for s in scenes]
    maps = [[rng.random((7, 7)).astype(np.float32) for _ in range(rng.integers(0, 4))] for _ in scenes]
    maps[0] = [cv2.resize(truths[0].masks[0], (7, 7), interpolation=cv2.INTER_AREA)]  # one good map
    got = R.score_maps(maps, truths)
    ev = Evaluator("streamloc", size=R.GT_SIZE, threshold=rule)
    multi = Evaluator("streamloc", size=R.GT_SIZE, threshold=rule)
    for m, gt in zip(maps, truths):
        ev.add(m, gt)
        if gt.num_sources >= 2:
            multi.add(m, gt)
    want = ev.summary()
    assert got["mean_ciou_by_rule"][str(rule)] == pytest.approx(want["mean_ciou"], abs=1e-9)
    assert got["silent_suppression_by_rule"][str(rule)] == pytest.approx(want["silent_suppression"], abs=1e-9)
    assert got["multi_ciou@0.3_by_rule"][str(rule)] == pytest.approx(multi.summary()["ciou@0.3"], abs=1e-9)
    assert got["counting_accuracy"] == pytest.approx(want["counting_accuracy"])
    assert got["mean_ciou_by_rule"][str(rule)] > 0  # the good map scores
