import numpy as np
import pytest
import torch

from streamloc.models import create_model


def literal_blend(avl, prior, alpha):
    def mm(x):
        lo, hi = min(x.flat), max(x.flat)
        return np.zeros_like(x) if hi == lo else (x - lo) / (hi - lo)

    return mm(alpha * mm(avl) + (1 - alpha) * mm(prior))


def test_avl_is_the_cosine_of_the_projected_features():
    torch.manual_seed(0)
    model = create_model("ezvsl", object_prior="none").eval()
    images, specs = model.example_inputs(batch=2)
    with torch.no_grad():
        avl, prior = model(images, specs)
        v = model.img_proj(model.imgnet(images))
        a = model.aud_proj(model.audnet(specs).amax(dim=(2, 3)))
    for b in range(2):
        for i, j in [(0, 0), (3, 5), (6, 6)]:
            vec = v[b, :, i, j]
            expected = torch.dot(vec, a[b]) / (vec.norm() * a[b].norm())
            assert abs(float(avl[b, i, j] - expected)) < 1e-5
    assert torch.count_nonzero(prior) == 0


def test_object_prior_is_mean_absolute_activation_of_the_untouched_net():
    torch.manual_seed(0)
    model = create_model("ezvsl").eval()  # EfficientNet-Lite0 ImageNet prior
    images, specs = model.example_inputs()
    with torch.no_grad():
        _, prior = model(images, specs)
        feats = model.objnet.net(images)
    np.testing.assert_allclose(prior[0].numpy(), feats[0].abs().mean(0).numpy(), rtol=1e-5)
    assert all(not p.requires_grad for p in model.objnet.parameters())
    assert model.external_prefixes() == ("objnet.",)


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_blend_matches_eq9_with_minmax(alpha):
    rng = np.random.default_rng(int(alpha * 10))
    model = create_model("ezvsl", object_prior="efficientnet_lite0", alpha=alpha)
    avl = rng.uniform(-1, 1, (7, 7)).astype(np.float32)
    prior = rng.uniform(0, 3, (7, 7)).astype(np.float32)
    sound_map, objects = model.postprocess({"avl": avl, "prior": prior})
    assert len(objects) == 1  # single-source method
    np.testing.assert_allclose(objects[0].map, literal_blend(avl, prior, alpha), atol=1e-6)
    assert objects[0].score == pytest.approx(float(avl.max()))
    np.testing.assert_array_equal(sound_map, avl)


def test_training_gradients_skip_the_object_prior():
    model = create_model("ezvsl").train()
    avl, prior = model(*model.example_inputs(batch=2))
    (avl.sum() + prior.sum()).backward()
    assert model.audnet.conv1.weight.grad is not None
    assert model.imgnet.conv1.weight.grad is not None
    assert all(p.grad is None for p in model.objnet.parameters())
    assert not model.objnet.training
