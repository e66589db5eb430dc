"""EZ-VSL training method: the MICL loss against a literal transcription of the paper's Eq. 3-5,
a 30-step smoke run on the synthetic task, frozen object prior, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from training.methods import create_method, list_methods
from training.methods.ezvsl import EZVSLHyperparameters, EZVSLMethod
from training.methods.losses import micl_loss

SMALL = {"image": {"size": (64, 64)}, "audio": {"window_seconds": 0.1}}


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def literal_micl(img, aud, tau):
    """Paper Eq. 3-5, one loop per index; sim is the cosine written out with its norms."""
    B, C, H, W = len(img), len(img[0]), len(img[0][0]), len(img[0][0][0])

    def cosine(n, h, w, m):
        dot = sum(img[n][c][h][w] * aud[m][c] for c in range(C))
        nv = math.sqrt(sum(img[n][c][h][w] ** 2 for c in range(C)))
        na = math.sqrt(sum(aud[m][c] ** 2 for c in range(C)))
        return dot / (nv * na)

    # best[n][m] = max over the bag V_n of sim(a_m, v) / tau
    best = [[max(cosine(n, h, w, m) for h in range(H) for w in range(W)) / tau
             for m in range(B)] for n in range(B)]
    a2v = 0.0  # Eq. 3: audio i against the bags of every image k
    v2a = 0.0  # Eq. 4: image i (its own bag) against every audio k
    for i in range(B):
        a2v += -(best[i][i] - math.log(sum(math.exp(best[k][i]) for k in range(B))))
        v2a += -(best[i][i] - math.log(sum(math.exp(best[i][k]) for k in range(B))))
    return a2v / B + v2a / B, a2v / B, v2a / B


def _unit(shape, dim, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=dim)


@pytest.mark.parametrize(
    "B, C, H, W, tau, seed",
    [
        (3, 5, 3, 3, 0.03, 0),
        (4, 6, 2, 3, 0.03, 1),
        (2, 5, 3, 3, 0.07, 2),
        (5, 3, 1, 1, 1.0, 3),  # a bag of one cell: plain InfoNCE
    ],
)
def test_micl_loss_matches_the_literal_formula(B, C, H, W, tau, seed):
    img = _unit((B, C, H, W), 1, seed)
    aud = _unit((B, C), 1, seed + 100)
    loss, parts = micl_loss(img, aud, tau)
    ref, ref_a2v, ref_v2a = literal_micl(img.tolist(), aud.tolist(), tau)
    assert loss.item() == pytest.approx(ref, rel=1e-12, abs=1e-12)
    assert float(parts["a2v"]) == pytest.approx(ref_a2v, rel=1e-12, abs=1e-12)
    assert float(parts["v2a"]) == pytest.approx(ref_v2a, rel=1e-12, abs=1e-12)


def test_registry_and_hyperparameters():
    assert {"ezvsl", "noprior"} <= set(list_methods())
    hp = EZVSLHyperparameters()
    assert (hp.lr, hp.weight_decay, hp.batch_size, hp.epochs) == (1e-4, 0.0, 128, 20)
    method = create_method("ezvsl", object_prior="none", hparams={"epochs": 100}, **SMALL)
    assert isinstance(method, EZVSLMethod) and method.hparams.epochs == 100
    opt = method.make_optimizer()
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["lr"] == 1e-4


def test_method_loss_is_micl_on_the_model_embeddings():
    torch.manual_seed(0)
    method = create_method("ezvsl", object_prior="none", **SMALL)
    method.model.eval()
    batch = method.synthetic_batch(3, torch.Generator().manual_seed(5))
    with torch.no_grad():
        loss, logs = method.loss(batch)
        img, aud = method.model.embed(batch["images"], batch["spectrograms"])
    ref, _, _ = literal_micl(img.double().tolist(), aud.double().tolist(), 0.03)
    assert loss.item() == pytest.approx(ref, rel=1e-4)
    assert logs["loss"] == loss.item()


def test_synthetic_batch_format():
    torch.manual_seed(0)
    method = create_method("ezvsl", object_prior="none", **SMALL)
    batch = method.synthetic_batch(4, torch.Generator().manual_seed(0))
    assert batch["images"].shape == (4, 3, 64, 64)
    assert batch["spectrograms"].shape == (4, *method.model.spectrogram_shape())
    assert batch["num_sources"].tolist() == [1, 1, 1, 1]  # EZ-VSL is single-source
    assert batch["masks"].shape == (4, 1, 64, 64) and bool(batch["masks"].any(dim=(2, 3)).all())
    again = method.synthetic_batch(4, torch.Generator().manual_seed(0))
    for key in batch:
        assert torch.equal(batch[key], again[key])


def test_thirty_adam_steps_reduce_the_loss_and_leave_the_prior_frozen():
    """The EfficientNet-Lite0 object prior (the default) is frozen; everything else trains.

    Margin: at initialisation the loss is of the order of 2 log B = 2.8 (B = 4; measured 3.35,
    the 1/tau = 33 scale spreads the random logits) and overfitting one batch of four tone/colour
    pairs at the paper's lr drives it to ~1e-3 within 30 steps (measured 3.35 -> 0.0012); we
    require final < 0.5 * initial: a clear sign of learning, with a wide safety factor for other
    BLAS builds / thread counts."""
    torch.manual_seed(0)
    method = create_method("ezvsl", **SMALL)
    assert method.model.objnet is not None
    batch = method.synthetic_batch(4, torch.Generator().manual_seed(1))
    method.model.train()
    opt = method.make_optimizer()
    trainable = {id(p) for p in method.trainable_parameters()}
    named = dict(method.model.named_parameters())
    assert trainable == {id(p) for n, p in named.items() if not n.startswith("objnet.")}
    losses = []
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        loss, _ = method.loss(batch)
        loss.backward()
        if not losses:
            for n, p in named.items():
                if n.startswith("objnet."):
                    assert p.grad is None, n
                else:
                    assert p.grad is not None and float(p.grad.abs().sum()) > 0, n
        opt.step()
        losses.append(loss.item())
    print(f"ezvsl 30 steps: {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for n, p in named.items() if n.startswith("objnet."))


def test_same_seed_same_loss():
    def run():
        torch.manual_seed(7)
        method = create_method("ezvsl", object_prior="none", **SMALL)
        batch = method.synthetic_batch(3, torch.Generator().manual_seed(3))
        return method.loss(batch)[0].item()

    assert run() == run()
