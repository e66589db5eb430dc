"""NoPrior training method: L_avc (official LVS trimap / paper Eq. 1-3) and L_osc (official cosine
margin / paper Eq. 4) against slow literal transcriptions, the IOI-in-training gather, a 30-step
smoke run on the synthetic task, frozen visual encoder, determinism."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from streamloc import ioi
from training.methods import create_method
from training.methods.losses import (
    ObjectBank,
    avc_official_loss,
    avc_paper_loss,
    collect_object_banks,
    cross_similarities,
    osc_official_loss,
    osc_paper_loss,
)
from training.methods.noprior import NoPriorHyperparameters, NoPriorMethod

SMALL = {"image": {"size": (64, 96)}, "audio": {"sample_rate": 16000, "window_seconds": 0.1}}


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

# ------------------------------------------------------------------------------------------------
# literal transcriptions (Python floats and loops only)
# ------------------------------------------------------------------------------------------------


def sig(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def lse(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def ratio(num, den, guard):
    if den == 0.0:
        return 0.0 if guard else math.nan
    return num / den


def literal_avc_official(S, eps_pos, eps_neg, sigma, temperature, guard):
    """Reference §5.4, S[n][m][p]: cosine of image n's cell p with audio m."""
    B, N = len(S), len(S[0][0])
    total = 0.0
    for n in range(B):
        num = den = 0.0
        for p in range(N):
            w = sig((S[n][n][p] - eps_pos) / sigma)
            num += w * S[n][n][p]
            den += w
        sim1 = ratio(num, den, guard)
        row = []
        for m in range(B):
            num = den = 0.0
            for p in range(N):
                w = sig((S[n][m][p] - eps_pos) / sigma)
                num += w * S[n][m][p]
                den += w
            mask = 1.0 - 100.0 * (1.0 if m == n else 0.0)
            row.append(ratio(num, den, guard) * mask)
        num = den = 0.0
        for p in range(N):
            w = 1.0 - sig((S[n][n][p] - eps_neg) / sigma)
            num += w * S[n][n][p]
            den += w
        sim2 = ratio(num, den, guard)
        logits = [v / temperature for v in [sim1, *row, sim2]]
        if any(math.isnan(v) for v in logits):
            return math.nan
        total += -(logits[0] - lse(logits))
    return total / B


def literal_avc_paper(S, alpha, omega, guard):
    """Paper Eq. 1-3."""
    B, N = len(S), len(S[0][0])
    total = 0.0
    for n in range(B):
        own = 0.0
        for p in range(N):
            own += S[n][n][p]
        Sn = [[ratio(S[n][m][p], own, guard) for p in range(N)] for m in range(B)]  # Eq. 1
        M = [sig((Sn[n][p] - alpha) / omega) for p in range(N)]  # Eq. 2
        pos_num = pos_den = neg_num = neg_den = 0.0
        for p in range(N):
            pos_num += M[p] * Sn[n][p]
            pos_den += M[p]
            neg_num += (1.0 - M[p]) * Sn[n][p]
            neg_den += 1.0 - M[p]
        pos = ratio(pos_num, pos_den, guard)
        neg = ratio(neg_num, neg_den, guard)
        for m in range(B):
            if m != n:
                acc = 0.0
                for p in range(N):
                    acc += Sn[m][p]
                neg += acc / N
        total += -(pos - lse([pos, neg]))
    return total / B


def dot(a, b):
    total = 0.0
    for k in range(len(a)):
        total += a[k] * b[k]
    return total


def cosine(a, b):
    return dot(a, b) / max(math.sqrt(dot(a, a)) * math.sqrt(dot(b, b)), 1e-8)


def normalize(a):
    n = max(math.sqrt(dot(a, a)), 1e-12)
    return [x / n for x in a]


def mean(vectors):
    return [sum(v[k] for v in vectors) / len(vectors) for k in range(len(vectors[0]))]


def literal_grouping(bank, bg, tau1=0.7, tau2=0.6):
    """The official grouping: background test, then union-find with union(j, k) making
    root(j) the parent of root(k). Returns ({root: members}, background flags)."""
    parent = list(range(len(bank)))

    def find(x):
        if parent[x] != x:
            parent[x] = find(parent[x])
        return parent[x]

    background = [cosine(bg, e) > tau1 for e in bank]
    for j in range(len(bank)):
        if background[j]:
            continue
        for k in range(j):
            if cosine(bank[j], bank[k]) > tau2:
                rj, rk = find(j), find(k)
                if rj != rk:
                    parent[rk] = rj
    groups = {}
    for j in range(len(bank)):
        if not background[j]:
            groups.setdefault(find(j), []).append(j)
    return groups, background


def literal_osc_official(items):
    """items: (bank, E_n, {root: members}) per batch item."""
    loss = 0.0
    for bank, bg, groups in items:
        for root, members in groups.items():
            anchor = bank[root]
            if sum(anchor) == 0:
                continue
            positive = mean([bank[j] for j in members])
            others = [j for j in range(len(bank)) if j not in members]
            if not others:  # mean of nothing: NaN in the official code -> skipped
                continue
            negative = [x + y for x, y in zip(mean([bank[j] for j in others]), bg)]
            if sum(negative) == 0:
                continue
            a, p, n = normalize(anchor), normalize(positive), normalize(negative)
            loss += (1.0 - dot(a, p)) + dot(a, n)
    return loss / len(items)


def literal_osc_paper(items):
    """items: (bank, E_n, {root: members}, seed scores); Eq. 4 with our Sec. 3.5 reading."""
    loss = 0.0
    for bank, bg, groups, scores in items:
        if not groups:
            continue
        item = 0.0
        for members in groups.values():
            best = members[0]
            for j in members:
                if scores[j] > scores[best]:
                    best = j
            cp = cosine(bank[best], mean([bank[j] for j in members]))
            negatives = [bank[j] for j in range(len(bank)) if j not in members] + [bg]
            cn = cosine(bank[best], mean(negatives))
            item += (1.0 - cp) + cn
        loss += item / len(groups)
    return loss / len(items)


# ------------------------------------------------------------------------------------------------
# L_avc
# ------------------------------------------------------------------------------------------------


def _cos_maps(B, C, H, W, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(B, C, H, W, generator=g, dtype=dtype), dim=1)
    aud = torch.nn.functional.normalize(torch.randn(B, C, generator=g, dtype=dtype), dim=1)
    img[:, :, 0, 0] = aud  # one sound-associated cell per image so Pos is not negligible
    img[1, :, 1, 1] = aud[1]
    return cross_similarities(img, aud)


def _guard_maps():
    """Cosine-valued maps whose soft regions are exactly empty in float64 with sigma = 2e-4:
    item 0 (all S in [0.6, 0.9]) has sum(Neg) = 0, item 1 (all S <= 0.45) sum(Pos) = 0 and
    every sum(PosAll) of its row 0 too."""
    g = torch.Generator().manual_seed(11)
    S = torch.rand(3, 3, 3, 3, generator=g, dtype=torch.float64) * 1.6 - 0.8
    S[0] = 0.6 + 0.3 * torch.rand(3, 3, 3, generator=g, dtype=torch.float64)
    S[1] = -0.5 + 0.95 * torch.rand(3, 3, 3, generator=g, dtype=torch.float64)
    return S


OFFICIAL_CASES = {
    "defaults": (lambda: _cos_maps(3, 5, 3, 3, 0), {}),
    "defaults-B4": (lambda: _cos_maps(4, 5, 2, 3, 1), {}),
    "loose-trimap": (lambda: _cos_maps(3, 5, 3, 3, 2),
                     {"eps_pos": 0.3, "eps_neg": 0.1, "sigma": 0.2, "temperature": 0.5}),
    "empty-regions-guarded": (_guard_maps, {"sigma": 2e-4}),
}


@pytest.mark.parametrize("case", sorted(OFFICIAL_CASES))
def test_avc_official_matches_the_literal_formula(case):
    make, opts = OFFICIAL_CASES[case]
    S = make().requires_grad_(True)
    full = {"eps_pos": 0.65, "eps_neg": 0.40, "sigma": 0.03, "temperature": 0.07, **opts}
    loss, logits = avc_official_loss(S, **full)
    ref = literal_avc_official(S.detach().flatten(2).tolist(), **full, guard=True)
    assert logits.shape == (S.shape[0], S.shape[0] + 2)
    assert loss.item() == pytest.approx(ref, rel=1e-10, abs=1e-12)
    loss.backward()
    assert torch.isfinite(S.grad).all()


def test_the_official_sum_pos_guard_matters():
    S = _guard_maps()
    assert float(torch.sigmoid((S[1, 1] - 0.65) / 2e-4).sum()) == 0.0  # sum(Pos) of item 1
    assert float(torch.sigmoid((S[1] - 0.65) / 2e-4).sum()) == 0.0  # its sum(PosAll) row
    assert float((1.0 - torch.sigmoid((S[0, 0] - 0.40) / 2e-4)).sum()) == 0.0  # sum(Neg), item 0
    unguarded, _ = avc_official_loss(S, sigma=2e-4, guard=False)
    assert math.isnan(unguarded.item())  # the official code's 0/0
    assert math.isnan(literal_avc_official(S.flatten(2).tolist(), 0.65, 0.40, 2e-4, 0.07, False))
    guarded, _ = avc_official_loss(S, sigma=2e-4)
    assert math.isfinite(guarded.item())


def test_the_guard_catches_the_float32_nan_of_the_default_trimap():
    """With the default 0.40 / 0.03 trimap, 1 - sigmoid(x) is exactly 0 in float32 once x > ~17,
    i.e. when every cell of a positive pair has S > ~0.92: the official loss is NaN."""
    S = _cos_maps(3, 5, 3, 3, 0, dtype=torch.float32)
    S[0, 0] = 0.97
    S.requires_grad_(True)
    unguarded, _ = avc_official_loss(S, guard=False)
    assert math.isnan(unguarded.item())
    loss, _ = avc_official_loss(S)
    assert math.isfinite(loss.item())
    loss.backward()
    assert torch.isfinite(S.grad).all()


def _paper_guard_maps():
    S = _cos_maps(3, 5, 3, 3, 4)
    S[2, 2] = 0.0
    S[2, 2, 0, 0], S[2, 2, 0, 1] = 0.5, -0.5  # sum_q cos(F^2(q), l^2) = 0 exactly
    return S


PAPER_CASES = {
    "lvs-values": (lambda: _cos_maps(3, 5, 3, 3, 0), {"alpha": 0.65, "omega": 0.03}),
    "scaled-to-1/hw": (lambda: _cos_maps(3, 5, 3, 3, 1), {"alpha": 0.15, "omega": 0.05}),
    "B2-2x3": (lambda: _cos_maps(2, 4, 2, 3, 3), {"alpha": 0.2, "omega": 0.1}),
    "zero-denominator-guarded": (_paper_guard_maps, {"alpha": 0.1, "omega": 0.05}),
    "empty-mask-guarded": (lambda: _cos_maps(3, 5, 3, 3, 5), {"alpha": -50.0, "omega": 1e-3}),
}


@pytest.mark.parametrize("case", sorted(PAPER_CASES))
def test_avc_paper_matches_the_literal_formula(case):
    make, opts = PAPER_CASES[case]
    S = make().requires_grad_(True)
    loss, logits = avc_paper_loss(S, **opts)
    ref = literal_avc_paper(S.detach().flatten(2).tolist(), **opts, guard=True)
    assert logits.shape == (S.shape[0], 2)
    assert loss.item() == pytest.approx(ref, rel=1e-10, abs=1e-12)
    loss.backward()
    assert torch.isfinite(S.grad).all()


# ------------------------------------------------------------------------------------------------
# L_osc
# ------------------------------------------------------------------------------------------------


def _osc_items(case):
    """(bank (T, C), E_n (C,), seed scores (T,)) per item, float64."""
    g = torch.Generator().manual_seed(sum(map(ord, case)))
    C = 5

    def r(*shape, s=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * s

    u, v, en = r(C), r(C), r(C)
    if case == "structured":
        items = [
            # two objects (u, v) and a background look-alike
            (torch.stack([u + r(C, s=0.1), v + r(C, s=0.1), u + r(C, s=0.1),
                          1.5 * en + r(C, s=0.05), v + r(C, s=0.1)]), en),
            # one object holding the whole bank: the official negative is a NaN mean -> skipped
            (torch.stack([u, u + r(C, s=0.05)]), en),
            # a zero anchor (skipped officially) and a second object
            (torch.stack([torch.zeros(C, dtype=torch.float64), v]), en),
            # only background entries: K_b = 0
            (torch.stack([2.0 * en, en + r(C, s=0.01)]), en),
        ]
    elif case == "chained-through-background":
        b = en + r(C, s=0.05)
        a = b + r(C, s=0.9)
        c = b + r(C, s=0.9)
        items = [(torch.stack([b, a, c]), en), (torch.stack([a, c, u, v]), en)]
    elif case == "random":
        items = [(r(int(t), C), r(C)) for t in (4, 5, 3)]
    else:
        raise ValueError(case)
    return [(bank, bg, r(bank.shape[0]).abs()) for bank, bg in items]


OSC_CASES = ["structured", "chained-through-background", "random"]


def _as_banks(items, requires_grad=False):
    banks, literal, groups_of = [], [], []
    bgs = torch.stack([bg for _, bg, _ in items]).requires_grad_(requires_grad)
    for bank, bg, scores in items:
        vectors = bank.clone().requires_grad_(requires_grad)
        groups, background = literal_grouping(bank.tolist(), bg.tolist())
        members = [np.array(m, dtype=np.int64) for m in sorted(groups.values(), key=lambda m: m[0])]
        banks.append(ObjectBank(vectors, torch.arange(len(bank)), scores,
                                np.array(background), members))
        groups_of.append(groups)
        literal.append((bank.tolist(), bg.tolist(), groups, scores.tolist()))
    return banks, bgs, literal, groups_of


@pytest.mark.parametrize("case", OSC_CASES)
def test_osc_official_matches_the_literal_formula(case):
    items = _osc_items(case)
    banks, bgs, literal, groups_of = _as_banks(items, requires_grad=True)
    for bank, groups in zip(banks, groups_of):  # the official anchor (root) is the last member
        assert bank.roots == sorted(groups, key=lambda root: groups[root][0])
    loss = osc_official_loss(banks, bgs)
    ref = literal_osc_official([item[:3] for item in literal])
    assert loss.item() == pytest.approx(ref, rel=1e-10, abs=1e-12)
    if ref != 0.0:
        loss.backward()
        grads = [b.vectors.grad for b in banks if b.vectors.grad is not None]
        assert any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("case", OSC_CASES)
def test_osc_paper_matches_the_literal_formula(case):
    banks, bgs, literal, _ = _as_banks(_osc_items(case))
    loss = osc_paper_loss(banks, bgs)
    assert loss.item() == pytest.approx(literal_osc_paper(literal), rel=1e-10, abs=1e-12)


def test_osc_skips_exactly_as_documented():
    items = _osc_items("structured")
    banks, bgs, literal, groups_of = _as_banks(items)
    assert [len(b.groups) for b in banks] == [2, 1, 2, 0]
    # item 1 (one group = whole bank) and item 2's zero anchor contribute nothing officially
    only = osc_official_loss([banks[1], banks[3]], bgs[[1, 3]])
    assert float(only) == 0.0
    # ... but the paper reading has E_n in every negative set
    assert float(osc_paper_loss([banks[1]], bgs[[1]])) > 0.0


# ------------------------------------------------------------------------------------------------
# the IOI step inside training
# ------------------------------------------------------------------------------------------------


def _scene(B=3, C=8, H=4, W=4, seed=0):
    """Two planted objects per item (strong S on a few cells) over random cells."""
    g = torch.Generator().manual_seed(seed)
    F = torch.nn.functional.normalize(torch.randn(B, C, H, W, generator=g), dim=1)
    S = torch.rand(B, H, W, generator=g) * 0.6 - 0.3
    for b in range(B):
        for proto_cells, level in (([(0, 0), (0, 1), (1, 0)], 0.9), ([(3, 3), (2, 3)], 0.7)):
            proto = torch.randn(C, generator=g)
            for i, j in proto_cells:
                cell = proto + 0.2 * torch.randn(C, generator=g)
                F[b, :, i, j] = torch.nn.functional.normalize(cell, dim=0)
                S[b, i, j] = level - 0.05 * torch.rand((), generator=g)
    Fhat = F * S[:, None]
    neg = 1.0 - torch.sigmoid((S - 0.40) / 0.03)
    En = (Fhat * neg[:, None]).mean(dim=(2, 3))
    return S, Fhat, En


def _reference_module():
    path = Path(__file__).resolve().parents[2] / "streamloc" / "ioi_reference.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_ioi_reference_for_noprior", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("rule, seed", [("official", 0), ("official", 1), ("paper", 2)])
def test_gathered_object_vectors_are_fhat_at_the_ioi_seeds(rule, seed):
    S, Fhat, En = _scene(seed=seed)
    Fhat.requires_grad_(True)
    En.requires_grad_(True)
    banks = collect_object_banks(S, Fhat, En, eps=0.1, tau1=0.7, tau2=0.6, rule=rule)
    reference = _reference_module()
    W = S.shape[2]
    seeds_used = []
    for i, bank in enumerate(banks):
        flat = Fhat[i].detach().flatten(1)
        # every E_t is F^ at its seed cell, bit for bit
        assert torch.equal(bank.vectors.detach(), flat[:, bank.seeds].t())
        groups = ioi.identify_objects(S[i].numpy(), Fhat[i].detach().numpy(),
                                      En[i].detach().numpy(), rule=rule)
        assert len(groups) == len(bank.groups) >= 1
        for g, members in zip(groups, bank.groups):
            np.testing.assert_array_equal(members, g.members)
            np.testing.assert_array_equal(bank.vectors.detach()[members].numpy(), g.vectors)
            assert divmod(int(bank.seeds[members[0]]), W) == g.seed
        if reference is not None:  # the full bank, background-rejected entries included
            ref = reference.reference_identify(S[i].numpy(), Fhat[i].detach().numpy(),
                                               En[i].detach().numpy(), rule=rule)
            assert bank.seeds.tolist() == ref["seeds"]
            assert bank.background.tolist() == ref["background"]
        seeds_used.append(set(bank.seeds.tolist()))
    loss = osc_official_loss(banks, En) + osc_paper_loss(banks, En)
    assert loss.item() != 0.0  # some object was not skipped (the OSC terms lie in [-1, 3])
    loss.backward()
    grad = Fhat.grad.flatten(2).abs().sum(1)  # (B, N)
    assert float(grad.sum()) > 0 and float(En.grad.abs().sum()) > 0
    for i, seeds in enumerate(seeds_used):  # gradients reach F^ exactly at the seeds
        nonzero = set(torch.nonzero(grad[i]).flatten().tolist())
        assert nonzero <= seeds


# ------------------------------------------------------------------------------------------------
# the method
# ------------------------------------------------------------------------------------------------


def test_hyperparameters():
    hp = NoPriorHyperparameters()
    assert (hp.lr, hp.weight_decay, hp.batch_size, hp.epochs) == (1e-4, 0.0, 128, 50)
    assert (hp.lambda_avc, hp.lambda_osc) == (1.0, 1.0)
    assert (hp.avc_variant, hp.osc_variant) == ("official", "official")
    with pytest.raises(ValueError, match="avc_variant"):
        NoPriorHyperparameters(avc_variant="eq3")
    with pytest.raises(ValueError, match="osc_variant"):
        NoPriorHyperparameters(osc_variant="softmax")


@pytest.fixture(scope="module")
def small_method():
    torch.manual_seed(0)
    method = create_method("noprior", **SMALL)
    assert isinstance(method, NoPriorMethod)
    method.model.eval()
    return method


@pytest.mark.parametrize("avc, osc",
                         [("official", "official"), ("paper", "paper"), ("official", "paper")])
def test_method_loss_is_the_literal_total(small_method, avc, osc):
    method = small_method
    method.hparams = NoPriorHyperparameters(avc_variant=avc, osc_variant=osc, lambda_avc=0.7,
                                            lambda_osc=1.3)
    batch = method.synthetic_batch(3, torch.Generator().manual_seed(4))
    c = method.model.config
    with torch.no_grad():
        total, logs = method.loss(batch)
        img, aud = method.model.embed(batch["images"], batch["spectrograms"])
        S, Fhat, En = method.model.heads(img, aud)
    sims = cross_similarities(img, aud).double().flatten(2).tolist()
    if avc == "official":
        ref_avc = literal_avc_official(sims, c.eps_pos, c.eps_neg, c.sigma, c.logit_temperature, True)
    else:
        ref_avc = literal_avc_paper(sims, c.eps_pos, c.sigma, True)
    banks = collect_object_banks(S, Fhat, En, eps=c.ioi_eps, tau1=c.tau1, tau2=c.tau2, rule=c.ioi_rule)
    items = []
    for i, bank in enumerate(banks):
        vecs = bank.vectors.double().tolist()
        groups, _ = literal_grouping(vecs, En[i].double().tolist(), c.tau1, c.tau2)
        items.append((vecs, En[i].double().tolist(), groups, bank.seed_scores.tolist()))
    if osc == "official":
        ref_osc = literal_osc_official([it[:3] for it in items])
    else:
        ref_osc = literal_osc_paper(items)
    assert logs["avc"] == pytest.approx(ref_avc, rel=1e-4, abs=1e-6)
    assert logs["osc"] == pytest.approx(ref_osc, rel=1e-4, abs=1e-6)
    assert float(total) == pytest.approx(0.7 * ref_avc + 1.3 * ref_osc, rel=1e-4, abs=1e-6)


def test_synthetic_batch_format(small_method):
    batch = small_method.synthetic_batch(6, torch.Generator().manual_seed(0))
    assert batch["images"].shape == (6, 3, 64, 96)
    assert batch["spectrograms"].shape == (6, *small_method.model.spectrogram_shape())
    k = batch["num_sources"]
    assert set(k.tolist()) <= {1, 2} and 2 in k.tolist()
    assert torch.equal((batch["classes"] >= 0).sum(1), k)
    assert torch.equal(batch["masks"].any(dim=(2, 3)).sum(1), k)
    for i in range(6):  # two squares never overlap and have distinct colours
        assert int(batch["masks"][i].sum(0).max()) == 1
        if k[i] == 2:
            assert batch["classes"][i, 0] != batch["classes"][i, 1]


@pytest.mark.parametrize("freeze_visual, avc, osc", [(True, "official", "official"),
                                                     (False, "paper", "paper")])
def test_thirty_adam_steps_reduce_the_loss(freeze_visual, avc, osc):
    """Margin: one fixed batch of 4 items at the paper's lr; the measured total halves
    (official/official, frozen visual: 1.70 -> 0.82 while L_osc grows from 0 as IOI starts to
    find objects; paper/paper, all trained: 1.50 -> 0.69). We require final < 0.8 * initial: the
    total is not monotone (the IOI decisions, hence L_osc, jump between steps), so a tight margin
    would be flaky, while 0.8 is well outside the step-to-step jitter."""
    torch.manual_seed(0)
    method = create_method("noprior", freeze_visual=freeze_visual,
                           hparams={"avc_variant": avc, "osc_variant": osc}, **SMALL)
    batch = method.synthetic_batch(4, torch.Generator().manual_seed(2))
    method.model.train()
    opt = method.make_optimizer()
    named = dict(method.model.named_parameters())
    trainable = {id(p) for p in method.trainable_parameters()}
    assert trainable == {id(p) for n, p in named.items()
                         if not (freeze_visual and n.startswith("imgnet."))}
    losses, objects = [], []
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        loss, logs = method.loss(batch)
        loss.backward()
        if not losses:
            for n, p in named.items():
                if freeze_visual and n.startswith("imgnet."):
                    assert p.grad is None, n
                else:
                    assert p.grad is not None and float(p.grad.abs().sum()) > 0, n
        opt.step()
        losses.append(loss.item())
        objects.append(logs["objects"])
    print(f"noprior[{avc}/{osc}, freeze_visual={freeze_visual}] 30 steps: "
          f"{losses[0]:.4f} -> {losses[-1]:.4f} (objects/item {objects[0]:.2f} -> {objects[-1]:.2f})")
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]
    if freeze_visual:
        assert all(p.grad is None for n, p in named.items() if n.startswith("imgnet."))


def test_same_seed_same_loss():
    def run():
        torch.manual_seed(3)
        method = create_method("noprior", **SMALL)
        batch = method.synthetic_batch(4, torch.Generator().manual_seed(9))
        loss, logs = method.loss(batch)
        return loss.item(), logs["objects"], logs["bank"]

    assert run() == run()
