"""AVGN model: official parameter names, the soft assignment against a literal loop, output shapes,
official-checkpoint conversion, live and labelled post-processing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamloc.models import create_model, list_models
from streamloc.models.avgn import (
    AVGN,
    AVGNConfig,
    AssignAttention,
    assign_weights,
    from_official,
    localize_with_labels,
)
from streamloc.models.checkpoint import load_checkpoint, load_foreign_state_dict
from streamloc.models.convert import convert_checkpoint

SMALL = {"image": {"size": (64, 64)}, "audio": {"window_seconds": 0.1}}


def _small(**options):
    return create_model("avgn", **{"num_classes": 5, "dim": 64, "heads": 4, **SMALL, **options})


# ------------------------------------------------------------------------------------------------
# Structure
# ------------------------------------------------------------------------------------------------


def _official_encoder_keys(enc: str, depth: int) -> set[str]:
    """Reference §2.6 key patterns of one ModalityTrans (without han_encoder)."""
    keys = set()
    for i in range(depth):
        for mod in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"{enc}.blocks.{i}.{mod}.weight", f"{enc}.blocks.{i}.{mod}.bias"}
    grouping = ["norm_tokens", "mlp_inter.fc1", "mlp_inter.fc2", "norm_post_tokens", "norm_x",
                "pre_assign_attn.norm_post", "pre_assign_attn.norm2", "pre_assign_attn.mlp.fc1",
                "pre_assign_attn.mlp.fc2", "norm_new_x", "mlp_channels.fc1", "mlp_channels.fc2"]
    grouping += [f"pre_assign_attn.attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "proj")]
    grouping += [f"assign.{p}" for p in ("q_proj", "k_proj", "v_proj", "proj")]
    for mod in grouping:
        keys |= {f"{enc}.grouping.{mod}.weight", f"{enc}.grouping.{mod}.bias"}
    return keys


def test_parameter_names_and_shapes_follow_the_official_checkpoints():
    model = create_model("avgn", num_classes=7)
    state = model.state_dict()
    head = {k for k in state if not k.startswith(("imgnet.", "audnet.", "img_proj.", "aud_proj."))}
    expected = ({"av_token"} | _official_encoder_keys("audio_encoder", 3)
                | _official_encoder_keys("visual_encoder", 3)
                | {f"{h}.{p}" for h in ("fc_prob_a", "fc_prob_v", "fc_cls") for p in ("weight", "bias")})
    assert head == expected
    assert not any("han_encoder" in k for k in state)
    shapes = {
        "av_token": (7, 512), "audio_encoder.blocks.0.attn.qkv.weight": (1536, 512),
        "audio_encoder.blocks.2.mlp.fc1.weight": (2048, 512),
        "visual_encoder.grouping.mlp_inter.fc1.weight": (256, 7),
        "visual_encoder.grouping.mlp_inter.fc2.weight": (7, 256),
        "audio_encoder.grouping.mlp_channels.fc1.weight": (2048, 512),
        "fc_prob_a.weight": (1, 512), "fc_prob_v.weight": (1, 512), "fc_cls.weight": (7, 512),
        "img_proj.weight": (512, 512, 1, 1), "aud_proj.weight": (512, 512),
        "audnet.conv1.weight": (64, 1, 7, 7),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    # official init: zero class tokens, Linear biases 0, LayerNorms (1, 0), Linear std 0.02
    assert torch.count_nonzero(model.av_token) == 0
    assert torch.count_nonzero(state["aud_proj.bias"]) == 0 and torch.count_nonzero(state["fc_cls.bias"]) == 0
    assert torch.all(state["visual_encoder.blocks.1.norm1.weight"] == 1)
    assert float(state["audio_encoder.blocks.0.mlp.fc1.weight"].std()) == pytest.approx(0.02, rel=0.05)
    assert float(state["aud_proj.weight"].std()) == pytest.approx(0.02, rel=0.05)


def test_registry_and_config_validation():
    assert "avgn" in list_models()
    cfg = AVGNConfig()
    assert (cfg.num_classes, cfg.dim, cfg.depth_aud, cfg.depth_vis, cfg.heads, cfg.mlp_ratio,
            cfg.drop_path, cfg.tau, cfg.attn_assign, cfg.source_threshold) == (
        221, 512, 3, 3, 8, 4.0, 0.1, 0.03, "soft", 0.5)
    assert AVGNConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"attn_assign": "gumbel"}, {"dim": 60, "heads": 8}, {"num_classes": 0},
                {"source_threshold": 1.5}, {"tau": 0.0}, {"drop_path": 1.0}):
        with pytest.raises(ValueError):
            AVGNConfig(**bad)


# ------------------------------------------------------------------------------------------------
# Soft assignment
# ------------------------------------------------------------------------------------------------


def _literal_assign(query, key, wq, bq, wk, bk, wv, bv, wp, bp):
    """One item: softmax over the K groups per token, rows / (row sum + 1), then proj(A v)."""
    dim = len(wq)

    def lin(w, b, x):
        return [sum(w[o][c] * x[c] for c in range(len(x))) + b[o] for o in range(len(w))]

    q = [lin(wq, bq, x) for x in query]
    k = [lin(wk, bk, x) for x in key]
    v = [lin(wv, bv, x) for x in key]
    n_groups, n_tokens = len(q), len(k)
    raw = [[sum(q[i][c] * k[j][c] for c in range(dim)) / math.sqrt(dim) for j in range(n_tokens)]
           for i in range(n_groups)]
    attn = [[0.0] * n_tokens for _ in range(n_groups)]
    for j in range(n_tokens):  # softmax down each column: over the groups
        z = sum(math.exp(raw[i][j]) for i in range(n_groups))
        for i in range(n_groups):
            attn[i][j] = math.exp(raw[i][j]) / z
    for i in range(n_groups):  # each group's row divided by (its sum over the tokens + 1)
        s = sum(attn[i])
        attn[i] = [a / (s + 1.0) for a in attn[i]]
    out = []
    for i in range(n_groups):
        mixed = [sum(attn[i][j] * v[j][c] for j in range(n_tokens)) for c in range(dim)]
        out.append(lin(wp, bp, mixed))
    return attn, out


@pytest.mark.parametrize("groups, tokens, seed", [(3, 5, 0), (4, 1, 1), (2, 7, 2)])
def test_soft_assignment_matches_a_literal_loop(groups, tokens, seed):
    torch.manual_seed(seed)
    dim = 4
    module = AssignAttention(dim, "soft").double()
    for p in module.parameters():  # larger weights than the init, so the softmax is not flat
        torch.nn.init.normal_(p, std=0.7)
    query = torch.randn(2, groups, dim, dtype=torch.float64)
    key = torch.randn(2, tokens, dim, dtype=torch.float64)
    with torch.no_grad():
        attn = module.attention(query, key)
        out = module(query, key)
    weights = [getattr(module, n).weight.tolist() for n in ("q_proj", "k_proj", "v_proj", "proj")]
    biases = [getattr(module, n).bias.tolist() for n in ("q_proj", "k_proj", "v_proj", "proj")]
    for b in range(2):
        ref_attn, ref_out = _literal_assign(query[b].tolist(), key[b].tolist(), weights[0], biases[0],
                                            weights[1], biases[1], weights[2], biases[2],
                                            weights[3], biases[3])
        np.testing.assert_allclose(attn[b].numpy(), np.array(ref_attn), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(out[b].numpy(), np.array(ref_out), rtol=1e-12, atol=1e-14)


def test_hard_assignment_is_a_straight_through_one_hot():
    raw = torch.tensor([[[2.0, -1.0, 0.5], [0.0, 3.0, 0.4]]], requires_grad=True)  # K=2, L=3
    attn = assign_weights(raw, "hard")
    # forward: one-hot over the groups per token, then rows / (row sum + 1)
    onehot = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    torch.testing.assert_close(attn.detach(), onehot / (onehot.sum(-1, keepdim=True) + 1))
    (attn * torch.arange(6.0).reshape(1, 2, 3)).sum().backward()
    assert raw.grad is not None and bool(raw.grad.abs().sum() > 0)  # softmax's gradient flows
    g = torch.Generator().manual_seed(0)
    noisy = assign_weights(raw.detach(), "hard", training=True, generator=g)
    assert torch.equal((noisy > 0).sum(dim=-2), torch.ones(1, 3, dtype=torch.long))  # one group per token


# ------------------------------------------------------------------------------------------------
# Forward
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, grid", [((64, 64), (2, 2)), ((96, 64), (3, 2))])
def test_output_shapes_and_maps(size, grid):
    torch.manual_seed(0)
    model = _small(image={"size": size}).eval()
    images, specs = model.example_inputs(batch=3)
    with torch.no_grad():
        maps, pa, pv = model(images, specs)
        parts = model.parts(images, specs)
    assert model.output_names == ("class_maps", "audio_probs", "visual_probs")
    assert tuple(maps.shape) == (3, 5, *grid) and tuple(pa.shape) == (3, 5) and tuple(pv.shape) == (3, 5)
    assert tuple(parts["xa"].shape) == (3, 5, 64) and tuple(parts["xv"].shape) == (3, 5, 64)
    assert bool(((pa > 0) & (pa < 1)).all()) and bool(((pv > 0) & (pv < 1)).all())
    # class map k = <img_n(p), xa[n, k]> / tau, with the raw (un-normalised) class embedding
    n, k = 1, 3
    ref = torch.einsum("chw,c->hw", parts["img"][n], parts["xa"][n, k]) / 0.03
    torch.testing.assert_close(maps[n, k], ref)
    torch.testing.assert_close(pa, torch.sigmoid(model.fc_prob_a(parts["xa"]))[..., 0])


def test_hard_mode_and_batch_of_one():
    torch.manual_seed(0)
    model = _small(attn_assign="hard").eval()
    maps, pa, pv = model(*model.example_inputs(batch=1))
    assert tuple(maps.shape) == (1, 5, 2, 2) and tuple(pa.shape) == (1, 5)


# ------------------------------------------------------------------------------------------------
# Official checkpoints
# ------------------------------------------------------------------------------------------------


def _official_checkpoint(model: AVGN, dim: int) -> dict:
    state = {"module." + k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(9)
    han = {  # a few of the never-executed han_encoder tensors (10 groups)
        "audio_encoder.han_encoder.norm_tokens.weight": (dim,),
        "audio_encoder.han_encoder.mlp_inter.fc1.weight": (dim // 2, 10),
        "audio_encoder.han_encoder.mlp_inter.fc2.weight": (10, dim // 2),
        "audio_encoder.han_encoder.assign.q_proj.weight": (dim, dim),
        "audio_encoder.han_encoder.mlp_channels.fc1.weight": (4 * dim, dim),
    }
    for key, shape in han.items():
        state["module." + key] = torch.randn(shape, generator=g)
    return {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "epoch": 7, "best_Precision": 0.41, "best_AP": 0.5, "best_F1": 0.3}


def _randomise_(model: AVGN) -> AVGN:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-trivial tokens and BN statistics
        model.av_token.normal_(0.0, 0.5, generator=g)
        model.audnet.bn1.running_mean.normal_(0.0, 0.1, generator=g)
    return model


def test_from_official_round_trip(tmp_path):
    torch.manual_seed(0)
    original = _randomise_(_small(depth_aud=2, depth_vis=1)).eval()
    src = tmp_path / "best.pth"
    torch.save(_official_checkpoint(original, 64), src)

    obj = load_foreign_state_dict(src)  # weights_only: no unsafe unpickling needed
    config, state, notes = from_official(obj, heads=4)
    assert config == {"num_classes": 5, "dim": 64, "depth_aud": 2, "depth_vis": 1, "mlp_ratio": 4.0,
                      "token_mlp_ratio": 0.5, "heads": 4}
    assert len(notes["dropped"]) == 5 and all(k.startswith("audio_encoder.han_encoder.") for k in notes["dropped"])
    assert any("epoch = 7" in n for n in notes["notes"])
    fresh = create_model("avgn", {**config, **SMALL})
    fresh.load_state_dict(state, strict=True)
    fresh.eval()
    inputs = original.example_inputs(batch=2)
    with torch.no_grad():
        for a, b in zip(original(*inputs), fresh(*inputs)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

    report = convert_checkpoint("avgn", src, tmp_path / "avgn.safetensors", config={"heads": 4, **SMALL})
    assert report["dropped"] == notes["dropped"]
    converted = load_checkpoint(tmp_path / "avgn.safetensors").eval()
    with torch.no_grad():
        for a, b in zip(original(*inputs), converted(*inputs)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# Post-processing
# ------------------------------------------------------------------------------------------------


def _item(probs):
    k = len(probs)
    rng = np.random.default_rng(0)
    return {"class_maps": rng.normal(size=(k, 3, 3)).astype(np.float32),
            "audio_probs": np.array(probs, np.float32),
            "visual_probs": np.full(k, 0.5, np.float32)}


def test_live_postprocess_picks_the_classes_above_threshold():
    model = _small()
    item = _item([0.2, 0.9, 0.6, 0.5, 0.1])
    sound_map, objects = model.postprocess(item)
    assert [int(np.argmax(o.vector)) for o in objects] == [1, 2, 3]  # >= 0.5, most probable first
    assert [o.score for o in objects] == pytest.approx([0.9, 0.6, 0.5])
    for o, k in zip(objects, (1, 2, 3)):
        np.testing.assert_array_equal(o.map, item["class_maps"][k])
    np.testing.assert_array_equal(sound_map, item["class_maps"][[1, 2, 3]].max(axis=0))
    # nothing above the threshold: no objects, the most probable class's map as sound map
    quiet = _item([0.2, 0.3, 0.1, 0.05, 0.4])
    sound_map, objects = model.postprocess(quiet)
    assert objects == []
    np.testing.assert_array_equal(sound_map, quiet["class_maps"][4])
    strict = _small(source_threshold=0.8)
    assert [int(np.argmax(o.vector)) for o in strict.postprocess(item)[1]] == [1]
    # labelled mode: the given classes, in the given order, whatever their probability
    _, objects = model.postprocess(item, class_ids=[4, 0])
    assert [int(np.argmax(o.vector)) for o in objects] == [4, 0]
    assert [o.score for o in objects] == pytest.approx([0.1, 0.2])


def test_localize_with_labels():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(3, 5, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(localize_with_labels({"class_maps": maps}, [4, 0, 2]),
                                  maps[[0, 1, 2], [4, 0, 2]])
    duet = localize_with_labels((maps, None, None), [[1, 2], [0, 3], [4, 4]])
    assert duet.shape == (3, 2, 2, 2)
    np.testing.assert_array_equal(duet[1, 1], maps[1, 3])
    np.testing.assert_array_equal(localize_with_labels(maps[2], 3), maps[2, 3])
    np.testing.assert_array_equal(localize_with_labels(maps[2], [3, 1]), maps[2, [3, 1]])
    t = torch.from_numpy(maps)
    out = localize_with_labels(t, torch.tensor([1, 1, 0]))
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, t[[0, 1, 2], [1, 1, 0]])
    with pytest.raises(ValueError, match="class ids"):
        localize_with_labels(maps, [5, 0, 0])
    with pytest.raises(ValueError, match="batch of 3"):
        localize_with_labels(maps, [1, 2])


def test_localizer_contract_end_to_end():
    """Model outputs → per-item dicts → postprocess, as streamloc.Localizer does."""
    torch.manual_seed(0)
    model = _small(source_threshold=0.0).eval()
    with torch.no_grad():
        outputs = [o.numpy() for o in model(*model.example_inputs(batch=2))]
    item = {name: outputs[k][0] for k, name in enumerate(model.output_names)}
    sound_map, objects = model.postprocess(item)
    assert sound_map.shape == (2, 2) and len(objects) == 5
    assert [o.score for o in objects] == sorted((o.score for o in objects), reverse=True)
