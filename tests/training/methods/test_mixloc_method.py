import math

import numpy as np
import pytest
import torch

import streamloc.models.mixloc  # noqa: F401  (registers the "mixloc" model)
from training.methods import create_method, list_methods
from training.methods import mixloc as ml

SMALL = {"image": {"size": (48, 48)}, "audio": {"kind": "logmel", "window_seconds": 0.24}}


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


# ------------------------------------------------------------------------------------------------
# Slow literal transcriptions
# ------------------------------------------------------------------------------------------------


def literal_phi(img, g, k, j, s):
    """φ(v_j, s) = max over positions of <f(x_p), s> for image j of mixture g (Eq. 1)."""
    _, C, H, W = img.shape
    best = -math.inf
    for y in range(H):
        for x in range(W):
            best = max(best, sum(img[g * k + j, c, y, x] * s[c] for c in range(C)))
    return best


def literal_paper_loss(img, aud, aud_shifted, tau):
    """Eq. 4 with the shifted-audio matrix A_IS': mean over mixtures of -(1/k) tr(log(A_SI A_IS'))."""
    G, k, _ = aud.shape
    total = 0.0
    for g in range(G):
        A_SI = np.zeros((k, k))  # audio node i -> image j, normalised over images
        for i in range(k):
            e = [math.exp(literal_phi(img, g, k, j, aud[g, i]) / tau) for j in range(k)]
            A_SI[i] = [x / sum(e) for x in e]
        A_IS = np.zeros((k, k))  # image j -> shifted audio node t, normalised over nodes
        for j in range(k):
            e = [math.exp(literal_phi(img, g, k, j, aud_shifted[g, t]) / tau) for t in range(k)]
            A_IS[j] = [x / sum(e) for x in e]
        trace = 0.0
        for i in range(k):
            trace += math.log(sum(A_SI[i, j] * A_IS[j, i] for j in range(k)))
        total += -trace / k
    return total / G


def literal_official_sis_loss(img, aud, aud_2, tau):
    """Reference §3.4: A_IS from mixture 1 (softmax over nodes), A_SI from mixture 2 (softmax over
    images), A_SIS = A_SI · A_IS, mean NLL against the identity over all nodes of all mixtures."""
    G, k, _ = aud.shape
    nll = []
    for g in range(G):
        A_IS = np.zeros((k, k))
        for j in range(k):
            e = [math.exp(literal_phi(img, g, k, j, aud[g, n]) / tau) for n in range(k)]
            A_IS[j] = [x / sum(e) for x in e]
        A_SI = np.zeros((k, k))
        for n in range(k):
            e = [math.exp(literal_phi(img, g, k, j, aud_2[g, n]) / tau) for j in range(k)]
            A_SI[n] = [x / sum(e) for x in e]
        for n in range(k):
            A_SIS_nn = sum(A_SI[n, j] * A_IS[j, n] for j in range(k))
            nll.append(-math.log(A_SIS_nn))
    return sum(nll) / len(nll)


def random_embeddings(G, k, C=5, H=2, W=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    norm = torch.nn.functional.normalize
    img = norm(torch.randn(G * k, C, H, W, generator=g, dtype=torch.float64), dim=1)
    aud = norm(torch.randn(G, k, C, generator=g, dtype=torch.float64), dim=2)
    aud2 = norm(torch.randn(G, k, C, generator=g, dtype=torch.float64), dim=2)
    return img, aud, aud2


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_loss_matches_the_literal_formulas(k, tau):
    img, aud, aud2 = random_embeddings(G=3, k=k, seed=k)
    a, b, i = aud.numpy(), aud2.numpy(), img.numpy()
    paper, _ = ml.cycle_consistency_loss(img, aud, aud2, tau, "paper")
    coded, _ = ml.cycle_consistency_loss(img, aud, aud2, tau, "official_sis")
    assert float(paper) == pytest.approx(literal_paper_loss(i, a, b, tau), rel=1e-10)
    assert float(coded) == pytest.approx(literal_official_sis_loss(i, a, b, tau), rel=1e-10)
    # no augmentation: Eq. 4 on one mixture, and both variants coincide
    plain, _ = ml.cycle_consistency_loss(img, aud, None, tau, "paper")
    assert float(plain) == pytest.approx(literal_paper_loss(i, a, a, tau), rel=1e-10)
    plain_sis, _ = ml.cycle_consistency_loss(img, aud, None, tau, "official_sis")
    assert float(plain_sis) == pytest.approx(float(plain))
    # the coded variant is the paper's with the two windows' roles exchanged
    swapped, _ = ml.cycle_consistency_loss(img, aud2, aud, tau, "paper")
    assert float(coded) == pytest.approx(float(swapped), rel=1e-12)


def test_loss_bounds_and_accuracy():
    img, aud, _ = random_embeddings(G=2, k=2, C=4, H=1, W=1)
    # a perfect walk: node t equals image t's only embedding
    aud_perfect = img[:, :, 0, 0].reshape(2, 2, 4)
    loss, acc = ml.cycle_consistency_loss(img, aud_perfect, None, 0.07)
    assert float(acc) == 1.0 and float(loss) < 0.5
    # the reversed assignment still returns (the walk is permutation-invariant) ...
    loss_rev, acc_rev = ml.cycle_consistency_loss(img, aud_perfect.flip(1), None, 0.07)
    assert float(loss_rev) == pytest.approx(float(loss)) and float(acc_rev) == 1.0
    # ... but identical nodes cannot: return probability 1/k
    same = aud_perfect[:, :1].expand(2, 2, 4)
    loss_same, _ = ml.cycle_consistency_loss(img, same, None, 0.07)
    assert float(loss_same) == pytest.approx(math.log(2))


def test_mixtures_are_rms_normalised_averages():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1000, generator=g, dtype=torch.float64) * torch.tensor([[3.0], [0.01], [1.0], [0.0]],
                                                                              dtype=torch.float64)
    mix = ml.mix_sources(w, k=2)
    expected = np.zeros((2, 1000))
    for b in range(4):
        rms = math.sqrt(sum(float(x) ** 2 for x in w[b]) / 1000)
        expected[b // 2] += w[b].numpy() * 0.1 / max(1e-4, rms) / 2
    np.testing.assert_allclose(mix.numpy(), expected, rtol=1e-12, atol=1e-15)
    assert float(ml.rms_normalize(w[:1]).square().mean().sqrt()) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="multiple"):
        ml.mix_sources(w[:3], k=2)


def test_random_windows_are_slices_of_the_same_signal():
    g = torch.Generator().manual_seed(0)
    signals = torch.arange(3 * 50, dtype=torch.float32).reshape(3, 50)
    w1, w2 = ml.random_windows(signals, 20, g)
    for w in (w1, w2):
        for b in range(3):
            start = int(w[b, 0] - signals[b, 0])
            torch.testing.assert_close(w[b], signals[b, start:start + 20])


# ------------------------------------------------------------------------------------------------
# Method
# ------------------------------------------------------------------------------------------------


def test_registered_with_the_official_hyperparameters():
    assert "mixloc" in list_methods()
    method = create_method("mixloc", **SMALL)
    assert isinstance(method, ml.MixLocMethod) and method.model.method == "mixloc"
    hp = method.hparams
    assert (hp.lr, hp.weight_decay, hp.batch_size, hp.epochs) == (1e-4, 5e-4, 128, 30)
    assert (hp.loss_variant, hp.shifted_audio, hp.mix_rms, hp.mix_eps) == ("paper", True, 0.1, 1e-4)
    opt = method.make_optimizer()
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["lr"] == 1e-4 and opt.param_groups[0]["weight_decay"] == 5e-4
    with pytest.raises(ValueError, match="loss_variant"):
        create_method("mixloc", hparams={"loss_variant": "isi"}, **SMALL)


def test_synthetic_batch_ties_tones_to_colours():
    method = create_method("mixloc", **SMALL)
    batch = method.synthetic_batch(4, torch.Generator().manual_seed(0))
    n = method.model.config.audio.num_samples
    assert batch["images"].shape == (4, 3, 48, 48)
    assert batch["waveforms"].shape == batch["waveforms_shifted"].shape == (4, n)
    assert batch["spectrograms"].shape == (4, *method.model.spectrogram_shape())
    ids = batch["source_ids"]
    assert ids[0] != ids[1] and ids[2] != ids[3]  # each mixture has two different sources
    freqs = np.fft.rfftfreq(n, 1 / 16000)
    for key in ("waveforms", "waveforms_shifted"):
        for b in range(4):
            peak = freqs[np.abs(np.fft.rfft(batch[key][b].numpy())).argmax()]
            assert abs(peak - ml._PALETTE[int(ids[b])][1]) < 30
    assert not torch.equal(batch["waveforms"], batch["waveforms_shifted"])


def test_loss_mixes_and_uses_the_model_frontend():
    torch.manual_seed(0)
    method = create_method("mixloc", **SMALL)
    method.model.eval()
    batch = method.synthetic_batch(4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss, logs = method.loss(batch)
        fe = method.model.make_frontend()
        m1 = fe(ml.mix_sources(batch["waveforms"], 2))
        m2 = fe(ml.mix_sources(batch["waveforms_shifted"], 2))
        img = method.model.embed_images(batch["images"])
        expected, _ = ml.cycle_consistency_loss(img, method.model.embed_audio(m1),
                                                method.model.embed_audio(m2), 0.07, "paper")
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert set(logs) == {"loss", "cycle_accuracy"}
    # without the augmentation the second windows are not needed and one mixture is walked
    plain = ml.MixLocMethod(method.model, ml.MixLocHyperparameters(shifted_audio=False))
    with torch.no_grad():
        loss_plain, _ = plain.loss({k: v for k, v in batch.items() if k != "waveforms_shifted"})
        expected_plain, _ = ml.cycle_consistency_loss(img, method.model.embed_audio(m1), None, 0.07)
    assert float(loss_plain) == pytest.approx(float(expected_plain), rel=1e-5)


def test_thirty_adam_steps_decrease_the_loss():
    torch.manual_seed(0)
    method = create_method("mixloc", **SMALL)
    batch = method.synthetic_batch(4, torch.Generator().manual_seed(0))
    model = method.model.train()
    opt = method.make_optimizer()
    losses = []
    for step in range(30):
        opt.zero_grad()
        loss, logs = method.loss(batch)
        loss.backward()
        if step == 0:
            trained = list(method.trainable_parameters())
            assert len(trained) == len(list(model.parameters()))
            no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not no_grad, no_grad
        opt.step()
        losses.append(logs["loss"])
    print(f"mixloc 30 steps: initial {losses[0]:.4f} final {losses[-1]:.4f}")
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
