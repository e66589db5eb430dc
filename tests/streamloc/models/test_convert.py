import argparse

import pytest
import torch

from streamloc.errors import CheckpointError
from streamloc.models import create_model
from streamloc.models.checkpoint import load_checkpoint, read_metadata
from streamloc.models.convert import convert_checkpoint


def _same_outputs(a, b):
    inputs = a.example_inputs(batch=2)
    with torch.no_grad():
        for x, y in zip(a.eval()(*inputs), b.eval()(*inputs)):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def _official_ezvsl(model, prefix="module."):
    state = {prefix + k: v.clone() for k, v in model.state_dict().items() if not k.startswith("objnet.")}
    return {"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 12,
            "best_cIoU": 0.38, "best_Auc": 0.39}


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_ezvsl_ddp_checkpoint(tmp_path, prefix):
    torch.manual_seed(0)
    original = create_model("ezvsl", dim=256)
    src = tmp_path / "best.pth"
    torch.save(_official_ezvsl(original, prefix), src)
    report = convert_checkpoint("ezvsl", src, tmp_path / "ezvsl.safetensors")
    converted = load_checkpoint(tmp_path / "ezvsl.safetensors")
    assert converted.config.dim == 256 and report["tensors"] > 100
    _same_outputs(original, converted)
    assert read_metadata(tmp_path / "ezvsl.safetensors")["provenance"]["converted_from"] == "best.pth"


def test_missing_tensor_is_named(tmp_path):
    original = create_model("ezvsl", object_prior="none")
    ckpt = _official_ezvsl(original)
    del ckpt["model"]["module.aud_proj.bias"]
    torch.save(ckpt, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"missing \['aud_proj.bias'\]"):
        convert_checkpoint("ezvsl", tmp_path / "broken.pth", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def _official_noprior(model):
    state = {"model." + k: v.clone() for k, v in model.state_dict().items()}
    state["model.flownet.conv1.weight"] = torch.randn(64, 2, 7, 7)
    state["model.flowatt.query_conv.weight"] = torch.randn(64, 512, 1, 1)
    state["model.flowatt.query_conv.bias"] = torch.randn(64)
    return {"state_dict": state, "epoch": 3, "global_step": 999,
            "hyper_parameters": argparse.Namespace(epsilon=0.65, tau=0.03),
            "pytorch-lightning_version": "2.1.0"}


def test_noprior_lightning_needs_explicit_trust(tmp_path):
    torch.manual_seed(1)
    original = create_model("noprior")
    src = tmp_path / "best.ckpt"
    torch.save(_official_noprior(original), src)
    with pytest.raises(CheckpointError, match="argparse.Namespace.*--trust-pickle"):
        convert_checkpoint("noprior", src, tmp_path / "np.safetensors")
    report = convert_checkpoint("noprior", src, tmp_path / "np.safetensors", trust_pickle=True)
    assert report["dropped"] == ["flowatt.query_conv.bias", "flowatt.query_conv.weight", "flownet.conv1.weight"]
    converted = load_checkpoint(tmp_path / "np.safetensors")
    assert converted.config.audio.sample_rate == 22050
    _same_outputs(original, converted)


def test_noprior_pth_with_model_key_needs_no_pickle(tmp_path):
    original = create_model("noprior")
    torch.save({"model": dict(original.state_dict())}, tmp_path / "htf.pth")
    convert_checkpoint("noprior", tmp_path / "htf.pth", tmp_path / "np.safetensors")
    _same_outputs(original, load_checkpoint(tmp_path / "np.safetensors"))


def test_unknown_method(tmp_path):
    with pytest.raises(CheckpointError, match="unknown method 'lvs'"):
        convert_checkpoint("lvs", tmp_path / "x.pth", tmp_path / "y.safetensors")
