"""AVGN training method: each loss against a literal transcription, the paper's Eq. 9 variant, the
synthetic weakly-labelled mixtures, and a 30-step Adam smoke run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.methods import create_method, list_methods
from training.methods.avgn import (
    AVGNHyperparameters,
    AVGNMethod,
    class_palette,
    group_loss_paper,
    loc_loss,
    mixture_targets,
    pred_loss,
    token_loss,
)

SMALL = {"num_classes": 5, "dim": 64, "heads": 4, "image": {"size": (64, 64)},
         "audio": {"window_seconds": 0.1}}


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# Literal transcriptions
# ------------------------------------------------------------------------------------------------


def literal_loc(img, xa, cls, tau):
    """Official: a_n = xa[n][cls_n] (no normalisation); logits[n][m] = max_p <img_n(p), a_m> / tau;
    CE over rows + CE over columns, each averaged over the batch."""
    B, C, H, W = len(img), len(img[0]), len(img[0][0]), len(img[0][0][0])
    a = [xa[n][cls[n]] for n in range(B)]
    logits = [[max(sum(img[n][c][h][w] * a[m][c] for c in range(C)) for h in range(H) for w in range(W)) / tau
               for m in range(B)] for n in range(B)]
    rows = sum(-(logits[n][n] - math.log(sum(math.exp(logits[n][m]) for m in range(B)))) for n in range(B)) / B
    cols = sum(-(logits[m][m] - math.log(sum(math.exp(logits[n][m]) for n in range(B)))) for m in range(B)) / B
    return rows + cols


def literal_token(logits):
    K = len(logits)
    return sum(-(logits[i][i] - math.log(sum(math.exp(z) for z in logits[i]))) for i in range(K)) / K


def literal_bce_sum(p, y):
    return sum(-(y[b][k] * math.log(p[b][k]) + (1 - y[b][k]) * math.log(1 - p[b][k]))
               for b in range(len(p)) for k in range(len(p[0])))


def literal_targets(classes, K):
    y_v = [[1.0 if k == row[0] else 0.0 for k in range(K)] for row in classes]
    y_a = [[1.0 if k in [c for c in row if c >= 0] else 0.0 for k in range(K)] for row in classes]
    return y_v, y_a


@pytest.mark.parametrize("B, K, C, H, W, tau, seed", [(3, 4, 5, 2, 2, 0.03, 0), (4, 3, 3, 1, 3, 0.07, 1),
                                                     (2, 5, 4, 2, 3, 1.0, 2)])
def test_loc_loss_matches_the_literal_formula(B, K, C, H, W, tau, seed):
    img = torch.nn.functional.normalize(_rand(B, C, H, W, seed=seed), dim=1)
    xa = 0.3 * _rand(B, K, C, seed=seed + 10)  # raw class embeddings, not unit vectors
    cls = torch.randint(0, K, (B,), generator=torch.Generator().manual_seed(seed))
    loss, parts = loc_loss(img, xa, cls, tau)
    ref = literal_loc(img.tolist(), xa.tolist(), cls.tolist(), tau)
    assert float(loss) == pytest.approx(ref, rel=1e-12, abs=1e-12)
    assert float(parts["a2v"] + parts["v2a"]) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("K, seed", [(3, 0), (6, 1)])
def test_token_loss_matches_the_literal_formula(K, seed):
    logits = 2.0 * _rand(K, K, seed=seed)
    assert float(token_loss(logits)) == pytest.approx(literal_token(logits.tolist()), rel=1e-12)


def test_mixture_targets():
    classes = torch.tensor([[2, -1], [0, 3], [1, 1], [4, -1]])
    y_v, y_a = mixture_targets(classes, 5)
    ref_v, ref_a = literal_targets(classes.tolist(), 5)
    assert y_v.tolist() == ref_v and y_a.tolist() == ref_a
    assert y_a[1].tolist() == [1, 0, 0, 1, 0]  # the 2-hot target of a waveform-sum mixture
    y_v1, y_a1 = mixture_targets(torch.tensor([3, 0]), 5)  # single-source labels (B,)
    assert torch.equal(y_v1, y_a1) and y_v1.argmax(1).tolist() == [3, 0]
    with pytest.raises(ValueError):
        mixture_targets(torch.tensor([[-1, 2]]), 5)
    with pytest.raises(ValueError):
        mixture_targets(torch.tensor([[5, -1]]), 5)


@pytest.mark.parametrize("seed", [0, 1])
def test_pred_and_paper_group_losses_match_the_literal_formulas(seed):
    B, K = 4, 5
    p_v = torch.sigmoid(_rand(B, K, seed=seed))
    p_a = torch.sigmoid(_rand(B, K, seed=seed + 1))
    tok = _rand(K, K, seed=seed + 2)
    classes = [[1, -1], [0, 4], [3, 2], [4, -1]]
    y_v, y_a = mixture_targets(torch.tensor(classes), K)
    ref_v, ref_a = literal_targets(classes, K)
    loss, parts = pred_loss(p_v, p_a, y_v.double(), y_a.double())
    lit_v = literal_bce_sum(p_v.tolist(), ref_v) / (B * K)
    lit_a = literal_bce_sum(p_a.tolist(), ref_a) / (B * K)
    assert float(parts["pred_v"]) == pytest.approx(lit_v, rel=1e-12)
    assert float(parts["pred_a"]) == pytest.approx(lit_a, rel=1e-12)
    assert float(loss) == pytest.approx(lit_v + lit_a, rel=1e-12)
    # paper Eq. 9: sum over the C classes of CE(h_i, e_i) + BCE(y_i, p^a_i) + BCE(y_i, p^v_i)
    tl = tok.tolist()
    ce_sum = sum(-(tl[i][i] - math.log(sum(math.exp(z) for z in tl[i]))) for i in range(K))
    lit_group = ce_sum + (literal_bce_sum(p_a.tolist(), ref_a) + literal_bce_sum(p_v.tolist(), ref_v)) / B
    paper = group_loss_paper(tok, p_v, p_a, y_v.double(), y_a.double())
    assert float(paper) == pytest.approx(lit_group, rel=1e-12)
    assert float(paper) == pytest.approx(K * float(token_loss(tok) + loss), rel=1e-12)  # = K x coded


# ------------------------------------------------------------------------------------------------
# The method
# ------------------------------------------------------------------------------------------------


def test_registry_and_hyperparameters():
    assert "avgn" in list_methods()
    hp = AVGNHyperparameters()
    assert (hp.lr, hp.weight_decay, hp.batch_size, hp.epochs, hp.group_variant) == (1e-4, 0.0, 128, 100, "official")
    with pytest.raises(ValueError):
        AVGNHyperparameters(group_variant="both")
    method = create_method("avgn", **SMALL)
    assert isinstance(method, AVGNMethod) and method.model.method == "avgn"
    opt = method.make_optimizer()
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["lr"] == 1e-4 and opt.defaults["weight_decay"] == 0
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in method.model.parameters())  # everything is trained


def test_synthetic_batch_has_weak_labels_and_mixtures():
    method = create_method("avgn", **SMALL)
    batch = method.synthetic_batch(16, torch.Generator().manual_seed(0))
    again = method.synthetic_batch(16, torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    assert tuple(batch["images"].shape) == (16, 3, 64, 64) and batch["spectrograms"].shape[:2] == (16, 1)
    classes, counts = batch["classes"], batch["num_sources"]
    assert tuple(classes.shape) == (16, 2) and bool((classes[:, 0] >= 0).all())
    mixed = classes[:, 1] >= 0
    assert torch.equal(counts, 1 + mixed.long()) and 0 < int(mixed.sum()) < 16
    assert bool((classes[mixed, 0] != classes[mixed, 1]).all())
    # the visible square has the colour of the visible class
    palette = class_palette(5)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None]
    for i in range(16):
        mask = batch["masks"][i, 0]
        rgb = (batch["images"][i][:, mask] * std + mean) * 255
        b, g, r = palette[int(classes[i, 0])]
        torch.testing.assert_close(rgb.mean(1), torch.tensor([r, g, b], dtype=torch.float32), atol=1.0, rtol=0)
    # mixtures are waveform sums (no rescaling): louder than single sources
    rms = batch["waveforms"].pow(2).mean(1).sqrt()
    assert float(rms[mixed].min()) > float(rms[~mixed].max())


def test_method_loss_is_the_sum_of_its_parts():
    torch.manual_seed(0)
    method = create_method("avgn", **SMALL)
    model = method.model.eval()
    batch = method.synthetic_batch(4, torch.Generator().manual_seed(3))
    with torch.no_grad():
        loss, logs = method.loss(batch)
        p = model.parts(batch["images"], batch["spectrograms"])
        y_v, y_a = mixture_targets(batch["classes"], 5)
        l_loc, _ = loc_loss(p["img"], p["xa"], batch["classes"][:, 0], 0.03)
        l_tok = token_loss(model.fc_cls(model.av_token))
        l_pred, _ = pred_loss(torch.sigmoid(p["visual_logits"]), torch.sigmoid(p["audio_logits"]), y_v, y_a)
    assert float(loss) == pytest.approx(float(l_loc + l_tok + l_pred), rel=1e-6)
    assert logs["token"] == pytest.approx(math.log(5), rel=1e-6)  # zero class tokens at init
    paper = create_method("avgn", model=model, hparams={"group_variant": "paper"})
    with torch.no_grad():
        loss_p, logs_p = paper.loss(batch)
    assert float(loss_p) == pytest.approx(float(l_loc + 5 * (l_tok + l_pred)), rel=1e-6)


def test_thirty_adam_steps_reduce_the_loss_and_train_every_parameter():
    torch.manual_seed(0)
    method = create_method("avgn", **SMALL)
    model = method.model.train()
    batch = method.synthetic_batch(6, torch.Generator().manual_seed(0))
    opt = method.make_optimizer()
    audio_qk = ("audio_encoder.grouping.pre_assign_attn.attn.q_proj.",
                "audio_encoder.grouping.pre_assign_attn.attn.k_proj.")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses, preds = [], []
    for step in range(30):
        loss, logs = method.loss(batch)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            zero = []
            for n, p in model.named_parameters():
                assert p.grad is not None and bool(torch.isfinite(p.grad).all()), n
                if not bool(p.grad.abs().max() > 0):
                    zero.append(n)
            # zero class tokens: fc_cls's weight gets no gradient on the first step only
            assert sorted(zero) == sorted(["fc_cls.weight"] + [f"{p}{w}" for p in audio_qk for w in ("bias", "weight")])
        opt.step()
        losses.append(logs["loss"])
        preds.append(logs["pred"])
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5]), losses
    assert np.mean(preds[-5:]) < np.mean(preds[:5]), preds  # the class predictions learn too
    # Adam without weight decay moves exactly the parameters that ever had a non-zero gradient:
    # all of them except the audio cross-attention's query and key (with one audio token, its
    # softmax is over a single key and always 1, as in the official code). None of the official
    # never-run han_encoder exists here.
    assert not any("han_encoder" in n for n in before)
    for n, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[n])
        assert changed != n.startswith(audio_qk), n
