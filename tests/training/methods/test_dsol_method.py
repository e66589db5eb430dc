"""DSOL training: every loss against a slow literal transcription, the dictionary step (dilation,
object features, k-means on planted clusters), optimizer groups, and a 30-step Adam run per stage
on the synthetic task (loss decreases, gradients only where the paper trains)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import streamloc.models.dsol  # noqa: F401 - registers the "dsol" model
from streamloc.models import create_model
from training.methods import create_method
from training.methods.dsol import (
    DSOLHyperparameters,
    DSOLMethod,
    build_dictionary,
    dilate_mask,
    interleave,
    kl_divergence,
    loss_classification,
    loss_localization,
    loss_stage_two,
)

SMALL = {"image": {"size": (48, 48)}, "audio": {"kind": "logmel", "window_seconds": 0.04}}


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


# -- literal transcriptions ----------------------------------------------------------------------

def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def _bce(p, y):
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def literal_localization(av_map, labels):
    """Eq. 1: BCE(GMP(l(a, v)), y_match), averaged over the pairs."""
    total = 0.0
    for n in range(len(av_map)):
        gmp = max(max(row) for row in av_map[n])
        total += _bce(gmp, labels[n])
    return total / len(av_map)


def literal_ce(logits, labels):
    total = 0.0
    for row, y in zip(logits, labels):
        total += -row[y] + math.log(sum(math.exp(v) for v in row))
    return total / len(labels)


def literal_stage_two(av_map, obj_logits, teacher_logits, weight, reduction):
    """Official stage-two objective, written out: even rows positives, odd rows negatives."""
    n2, H, W = len(av_map), len(av_map[0]), len(av_map[0][0])
    pos = [max(max(row) for row in av_map[i]) for i in range(0, n2, 2)]
    neg = []
    for i in range(1, n2, 2):  # AdaptiveMaxPool2d((2, 2)): bins [floor(k*n/2), ceil((k+1)*n/2))
        for bi in range(2):
            for bj in range(2):
                r0, r1 = (bi * H) // 2, -((-(bi + 1) * H) // 2)
                c0, c1 = (bj * W) // 2, -((-(bj + 1) * W) // 2)
                neg.append(max(av_map[i][r][c] for r in range(r0, r1) for c in range(c0, c1)))
    l_loc = 0.5 * (sum(_bce(p, 1) for p in pos) / len(pos) + sum(_bce(p, 0) for p in neg) / len(neg))
    terms = []
    for b, i in enumerate(range(0, n2, 2)):
        s = obj_logits[i]
        log_p = [v - math.log(sum(math.exp(u) for u in s)) for v in s]
        den = sum(math.exp(u) for u in teacher_logits[b])
        q = [math.exp(u) / den for u in teacher_logits[b]]
        terms.extend(qk * (math.log(qk) - lp) for qk, lp in zip(q, log_p))
    n_pos = n2 // 2
    l_cat = sum(terms) / (len(terms) if reduction == "mean" else n_pos)
    return l_cat + weight * l_loc, l_cat, l_loc


def literal_dilation(mask):
    """The official location_dilation on one (h, w) map, written as loops."""
    h, w = len(mask), len(mask[0])
    out = [[0] * w for _ in range(h)]
    for i in range(h):
        for j in range(w):
            if mask[i][j]:
                out[i][j] = 1
                if 0 < i < h - 1 and 0 < j < w - 1:
                    out[i - 1][j] = out[i + 1][j] = out[i][j - 1] = out[i][j + 1] = 1
    return out


# -- pure losses ---------------------------------------------------------------------------------

def test_localization_loss_matches_eq1():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([1.0, 0, 1, 0, 1, 0], dtype=torch.float64)
    ref = literal_localization(torch.sigmoid(logits).tolist(), labels.tolist())
    assert float(loss_localization(logits, labels)) == pytest.approx(ref, rel=1e-10)


def test_classification_loss_matches_cross_entropy():
    g = torch.Generator().manual_seed(1)
    v, a = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 1, 2])
    lv, la = loss_classification(v, a, y)
    assert float(lv) == pytest.approx(literal_ce(v.tolist(), y.tolist()), rel=1e-10)
    assert float(la) == pytest.approx(literal_ce(a.tolist(), y.tolist()), rel=1e-10)


@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
@pytest.mark.parametrize("hw", [(4, 4), (5, 3)])  # odd sizes: overlapping adaptive-pool bins
def test_stage_two_loss_matches_the_official_objective(reduction, hw):
    g = torch.Generator().manual_seed(2)
    av_logit = 2 * torch.randn(6, *hw, generator=g, dtype=torch.float64)
    obj = torch.randn(6, 5, generator=g, dtype=torch.float64)
    teacher = 2 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    total, l_cat, l_loc = loss_stage_two(av_logit, obj, teacher, loc_weight=0.5, kl_reduction=reduction)
    r_total, r_cat, r_loc = literal_stage_two(torch.sigmoid(av_logit).tolist(), obj.tolist(),
                                              teacher.tolist(), 0.5, reduction)
    assert float(l_loc) == pytest.approx(r_loc, rel=1e-10)
    assert float(l_cat) == pytest.approx(r_cat, rel=1e-10)
    assert float(total) == pytest.approx(r_total, rel=1e-10)
    # "mean" is the official legacy KLDivLoss(reduce=True)
    if reduction == "mean":
        with warnings.catch_warnings():  # PyTorch warns that "mean" is not the KL definition
            warnings.simplefilter("ignore", UserWarning)
            ref = torch.nn.KLDivLoss(reduction="mean")(torch.log_softmax(obj[0::2], 1),
                                                       torch.softmax(teacher, 1))
        assert float(l_cat) == pytest.approx(float(ref), rel=1e-10)


def test_kl_handles_zero_target_mass():
    log_p = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0]]), dim=1)
    q = torch.tensor([[0.0, 0.5, 0.5]])
    ref = sum(qk * (math.log(qk) - lp) for qk, lp in zip([0.5, 0.5], log_p[0, 1:].tolist()))
    assert float(kl_divergence(log_p, q, "batchmean")) == pytest.approx(ref, rel=1e-6)


def test_interleave_is_the_official_batch_organize():
    images = torch.arange(3).float().view(3, 1, 1, 1).expand(3, 3, 2, 2)
    negatives = 10 + images
    specs = torch.arange(3).float().view(3, 1, 1, 1).expand(3, 1, 4, 2)
    img2, spec2, labels = interleave({"images": images, "negative_images": negatives, "spectrograms": specs})
    assert img2[:, 0, 0, 0].tolist() == [0, 10, 1, 11, 2, 12]
    assert spec2[:, 0, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]
    assert labels.tolist() == [1, 0, 1, 0, 1, 0]
    img2, _, _ = interleave({"images": images, "spectrograms": specs})  # negatives: next sample
    assert img2[:, 0, 0, 0].tolist() == [0, 1, 1, 2, 2, 0]


# -- dictionary step -----------------------------------------------------------------------------

def test_dilation_matches_the_official_loops():
    rng = np.random.default_rng(3)
    masks = rng.random((6, 7, 5)) > 0.8
    masks[0] = False
    masks[0, 0, 2] = masks[0, 3, 2] = True  # a border cell does not spread, an interior one does
    out = dilate_mask(torch.from_numpy(masks))
    for m, o in zip(masks, out):
        assert o.int().tolist() == literal_dilation(m.astype(int).tolist())
    assert out[0].int().sum() == 1 + 5


def test_object_features_are_masked_means_over_all_cells():
    torch.manual_seed(4)
    method = DSOLMethod(create_model("dsol", num_clusters=3, **SMALL))
    batch = method.synthetic_batch(3, torch.Generator().manual_seed(0))
    method.model.train()
    feats = method.object_features(batch["images"], batch["spectrograms"])
    assert method.model.training  # restored
    with torch.no_grad():
        p = method.model.eval().parts(batch["images"], batch["spectrograms"])
    v, av = p["v_fea"].double().numpy(), p["av_map"].numpy()
    for b in range(3):
        mask = np.array(literal_dilation((av[b] > 0.05).astype(int).tolist()))
        ref = (v[b] * mask[None]).sum(axis=(1, 2)) / mask.size
        np.testing.assert_allclose(feats[b].numpy(), ref, rtol=1e-5, atol=1e-7)


def test_dictionary_recovers_planted_clusters():
    rng = np.random.default_rng(5)
    k, per, dim = 4, 15, 512
    centres = np.abs(rng.normal(size=(k, dim))) * (rng.random((k, dim)) > 0.7)
    planted = np.repeat(np.arange(k), per)
    scale = rng.uniform(0.3, 3.0, size=(k * per, 1))  # k-means sees directions only
    feats = (centres[planted] + 0.05 * np.abs(rng.normal(size=(k * per, dim)))) * scale
    order = rng.permutation(k * per)
    feats, planted = feats[order].astype(np.float32), planted[order]
    res = build_dictionary(feats, k, n_init=10, seed=0)
    assert res.labels.shape == (k * per,) and res.dictionary.shape == (k, dim)
    mapping = {}
    for c in range(k):  # each found cluster is exactly one planted one
        members = set(planted[res.labels == c].tolist())
        assert len(members) == 1
        mapping[c] = members.pop()
    assert sorted(mapping.values()) == list(range(k))
    for c, p in mapping.items():  # dictionary = mean of the UN-normalised features
        np.testing.assert_allclose(res.dictionary[c], feats[planted == p].mean(axis=0), rtol=1e-5)
    with pytest.raises(ValueError, match="at least"):
        build_dictionary(feats[:3], k)


def test_cluster_runs_on_batches_and_feeds_stage_two():
    torch.manual_seed(6)
    method = DSOLMethod(create_model("dsol", num_clusters=3, **SMALL))
    g = torch.Generator().manual_seed(1)
    res = method.cluster([method.synthetic_batch(4, g), method.synthetic_batch(4, g)])
    assert res.labels.shape == (8,) and res.dictionary.shape == (3, 512)
    two = method.model.stage_two(res.dictionary)
    np.testing.assert_array_equal(two.obj_rep.numpy(), res.dictionary)


# -- method wiring -------------------------------------------------------------------------------

def test_hyperparameters_and_optimizer_groups():
    method = create_method("dsol", **SMALL, num_clusters=3)
    hp = method.hparams
    assert isinstance(method, DSOLMethod) and method.stage == 1
    assert (hp.lr, hp.weight_decay, hp.batch_size, hp.epochs, hp.class_lr, hp.init_num,
            hp.class_iter, hp.mask_threshold, hp.loc_weight) == (1e-4, 1e-4, 32, 15, 1e-3, 1, 3, 0.05, 0.5)
    opt = method.make_optimizer()
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 1e-3]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 1e-4]
    cls_ids = {id(p) for p in method.model.classifier_parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == cls_ids
    assert not cls_ids & {id(p) for p in opt.param_groups[0]["params"]}
    assert [method.clusters_after_epoch(e) for e in range(3)] == [False, True, True]
    with pytest.raises(ValueError, match="stage"):
        DSOLMethod(method.model, DSOLHyperparameters(stage=2))
    with pytest.raises(ValueError, match="kl_reduction"):
        DSOLHyperparameters(kl_reduction="sum")


def test_start_classification_resets_layers_and_their_adam_state():
    torch.manual_seed(7)
    method = DSOLMethod(create_model("dsol", num_clusters=3, **SMALL))
    batch = method.synthetic_batch(2, torch.Generator().manual_seed(2))
    batch["pseudo_labels"] = batch["classes"] % 3
    opt = method.make_optimizer()
    loss, logs = method.loss(batch)
    assert set(logs) >= {"loss_cls", "v_acc", "a_acc"}
    assert float(loss.detach()) == pytest.approx(logs["loss_v"] + logs["loss_a"], rel=1e-6)
    loss.backward()
    for p in method.model.classifier_parameters():
        assert p.grad is not None
    assert method.model.visual_net.conv1.weight.grad is not None  # the backbone learns too
    assert method.model.conv_av.weight.grad is None  # the localization head is not involved
    opt.step()
    method.start_classification(opt)
    layer = method.model.a_class_layer
    assert float(layer.bias.detach().abs().max()) == 0.0
    assert all(p not in opt.state for p in method.model.classifier_parameters())
    assert method.model.visual_net.conv1.weight in opt.state


def _run(method, batch, steps=30):
    opt = method.make_optimizer()
    losses, first_grads, first_logs = [], None, None
    method.model.train()
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        loss, logs = method.loss(batch)
        loss.backward()
        if i == 0:
            first_grads = {n: p.grad for n, p in method.model.named_parameters()}
        opt.step()
        losses.append(float(loss.detach()))
        if i == 0:
            first_logs = logs
    return losses, first_logs, logs, first_grads


def test_stage_one_30_adam_steps():
    torch.manual_seed(8)
    method = DSOLMethod(create_model("dsol", num_clusters=3, **SMALL))
    batch = method.synthetic_batch(2, torch.Generator().manual_seed(3))
    assert batch["images"].shape == (2, 3, 48, 48) and batch["spectrograms"].shape == (2, 1, 9, 64)
    losses, _, logs, grads = _run(method, batch)
    print(f"DSOL stage one: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]
    assert logs["acc"] == 1.0 and logs["pos_score"] > logs["neg_score"]
    for name, grad in grads.items():
        if name.startswith(("v_class_layer", "a_class_layer")):
            assert grad is None, name  # localization steps leave the class layers alone
        else:
            assert grad is not None and bool(grad.abs().sum() > 0), name


def test_stage_two_30_adam_steps_with_a_frozen_teacher():
    torch.manual_seed(9)
    one = create_model("dsol", num_clusters=3, **SMALL)
    with torch.no_grad():  # a stage-one audio classifier that is not uniform
        one.a_class_layer.weight.normal_(0.0, 0.5)
    dictionary = np.abs(np.random.default_rng(0).normal(size=(3, 512))).astype(np.float32) * 0.05
    two = one.stage_two(dictionary)
    method = DSOLMethod(two, DSOLHyperparameters(stage=2))
    assert method.hparams.epochs == 5
    teacher = method.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    batch = method.synthetic_batch(2, torch.Generator().manual_seed(4))
    assert batch["sounding"].shape == (2, 4)
    opt_ids = {id(p) for g in method.make_optimizer().param_groups for p in g["params"]}
    assert not opt_ids & {id(p) for p in two.classifier_parameters()}
    assert not opt_ids & {id(p) for p in teacher.parameters()}
    losses, first, logs, grads = _run(method, batch)
    print(f"DSOL stage two: loss {losses[0]:.4f} -> {losses[-1]:.4f} (L_cat {first['loss_cat']:.4f} -> "
          f"{logs['loss_cat']:.4f}, L_loc {first['loss_loc']:.4f} -> {logs['loss_loc']:.4f})")
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]
    for name, grad in grads.items():
        if name.startswith(("v_class_layer", "a_class_layer")):
            assert grad is None, name
        else:
            assert grad is not None and bool(grad.abs().sum() > 0), name
    assert not teacher.training
    for p in teacher.parameters():
        assert p.grad is None and not p.requires_grad
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # frozen, BatchNorm statistics included
    assert not torch.equal(two.audio_net.conv1.weight, teacher.audio_net.conv1.weight)  # a copy


def test_teacher_comes_from_the_given_stage_one_model():
    torch.manual_seed(10)
    one = create_model("dsol", num_clusters=3, **SMALL)
    two = create_model("dsol", stage=2, num_clusters=3, **SMALL)
    method = DSOLMethod(two, teacher=one)
    assert method.stage == 2
    torch.testing.assert_close(method.teacher.a_class_layer.weight, one.a_class_layer.weight)
    specs = torch.randn(2, 1, 9, 64)
    with torch.no_grad():
        ref = one.eval().parts(torch.randn(2, 3, 48, 48), specs, logits=True)["a_logits"]
        torch.testing.assert_close(method.teacher(specs), ref)
    with pytest.raises(TypeError, match="DSOLHyperparameters"):
        DSOLMethod(two, hparams=object())
