import numpy as np
import pytest
import torch

from streamloc import ioi
from streamloc.models import create_model


def literal_heads(img, aud, eps_neg, sigma):
    """Slow transcription of Sec. 3.2-3.3 + reference §5.3 (background divided by N)."""
    B, C, H, W = img.shape
    S = np.zeros((B, H, W))
    Fhat = np.zeros((B, C, H, W))
    En = np.zeros((B, C))
    for b in range(B):
        for i in range(H):
            for j in range(W):
                S[b, i, j] = sum(img[b, c, i, j] * aud[b, c] for c in range(C))
                neg = 1.0 - 1.0 / (1.0 + np.exp(-(S[b, i, j] - eps_neg) / sigma))
                for c in range(C):
                    Fhat[b, c, i, j] = img[b, c, i, j] * S[b, i, j]
                    En[b, c] += Fhat[b, c, i, j] * neg / (H * W)
    return S, Fhat, En


def test_heads_match_the_literal_formulas():
    torch.manual_seed(0)
    model = create_model("noprior")
    img = torch.nn.functional.normalize(torch.randn(2, 6, 3, 4, dtype=torch.float64), dim=1)
    aud = torch.nn.functional.normalize(torch.randn(2, 6, dtype=torch.float64), dim=1)
    # push a few cells above eps so the negative mask is not all ones
    img[:, :, 0, 0] = aud
    S, Fhat, En = model.heads(img, aud)
    rS, rF, rE = literal_heads(img.numpy(), aud.numpy(), model.config.eps_neg, model.config.sigma)
    np.testing.assert_allclose(S.numpy(), rS, atol=1e-12)
    np.testing.assert_allclose(Fhat.numpy(), rF, atol=1e-12)
    np.testing.assert_allclose(En.numpy(), rE, atol=1e-12)
    assert S[:, 0, 0].min() > 0.99  # the planted cell really is sound-associated


@pytest.mark.parametrize(
    "options, grid, channels",
    [
        ({}, (7, 7), 512),
        ({"visual_backbone": "resnet18_s16"}, (14, 14), 512),
        ({"visual_backbone": "efficientnet_lite0", "freeze_visual": True}, (7, 7), 512),
        ({"proj_dim": 128}, (7, 7), 128),
    ],
)
def test_forward_shapes(options, grid, channels):
    model = create_model("noprior", **options).eval()
    with torch.no_grad():
        S, Fhat, En = model(*model.example_inputs(batch=2))
    assert S.shape == (2, *grid)
    assert Fhat.shape == (2, channels, *grid)
    assert En.shape == (2, channels)
    assert float(S.abs().max()) <= 1.0 + 1e-5  # a cosine map


def test_postprocess_is_the_ioi_step():
    torch.manual_seed(1)
    model = create_model("noprior").eval()
    with torch.no_grad():
        outs = [o[0].numpy() for o in model(*model.example_inputs())]
    item = dict(zip(model.output_names, outs))
    sound_map, objects = model.postprocess(item)
    groups = ioi.identify_objects(*outs, eps=0.1, tau1=0.7, tau2=0.6, rule="official")
    assert len(objects) == len(groups)
    for obj, g in zip(objects, groups):
        np.testing.assert_array_equal(obj.cells, g.cells)
        np.testing.assert_allclose(obj.map, g.map)
        assert obj.score == g.score
    np.testing.assert_array_equal(sound_map, outs[0])


def test_frozen_visual_gets_no_gradient_and_keeps_eval_mode():
    model = create_model("noprior", visual_backbone="efficientnet_lite0", freeze_visual=True)
    model.train()
    assert not model.imgnet.training and model.audnet.training
    S, Fhat, En = model(*model.example_inputs(batch=2))
    (S.sum() + En.sum()).backward()
    assert all(p.grad is None for p in model.imgnet.parameters())
    assert model.audnet.conv1.weight.grad is not None and model.img_proj.weight.grad is not None
    assert model.external_prefixes() == ("imgnet.",)
