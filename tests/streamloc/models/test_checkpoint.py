import argparse
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from streamloc.errors import CheckpointError
from streamloc.models import create_model
from streamloc.models.checkpoint import (
    load_checkpoint,
    load_foreign_state_dict,
    read_metadata,
    save_checkpoint,
)


def _outputs(model, inputs):
    with torch.no_grad():
        return model.eval()(*inputs)


@pytest.fixture(scope="module")
def noprior_file(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("noprior", proj_dim=64)
    path = tmp_path_factory.mktemp("ckpt") / "noprior.safetensors"
    save_checkpoint(model, path, provenance={"command": "unit test"})
    return model, path


def test_round_trip_reproduces_outputs_and_metadata(noprior_file):
    model, path = noprior_file
    loaded = load_checkpoint(path)
    inputs = model.example_inputs(batch=2)
    for a, b in zip(_outputs(model, inputs), _outputs(loaded, inputs)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    meta = read_metadata(path)
    assert meta["method"] == "noprior"
    assert meta["config"]["proj_dim"] == 64
    assert meta["preprocessing"]["audio"]["sample_rate"] == 22050
    assert meta["provenance"] == {"command": "unit test"}
    assert loaded.checkpoint_metadata["library_version"]


def test_packaged_frozen_weights_are_not_stored_but_checked(tmp_path):
    model = create_model("ezvsl")  # EfficientNet-Lite0 object prior from its package
    path = tmp_path / "ezvsl.safetensors"
    save_checkpoint(model, path)
    stored = load_file(str(path))
    assert stored and not any(k.startswith("objnet.") for k in stored)
    inputs = model.example_inputs()
    for a, b in zip(_outputs(model, inputs), _outputs(load_checkpoint(path), inputs)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a different package version (simulated by a tampered digest) is refused
    meta = read_metadata(path)
    raw = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in meta.items()}
    raw["external"] = json.dumps({"objnet.": "0" * 64})
    save_file(stored, str(path), metadata=raw)
    with pytest.raises(CheckpointError, match="packaged weights under 'objnet.'"):
        load_checkpoint(path)


def test_fp16_storage_loads_back_as_fp32(tmp_path):
    torch.manual_seed(0)
    model = create_model("noprior", proj_dim=32)
    path = tmp_path / "half.safetensors"
    save_checkpoint(model, path, dtype=torch.float16)
    assert load_file(str(path))["aud_proj.weight"].dtype == torch.float16
    loaded = load_checkpoint(path)
    assert loaded.aud_proj.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.aud_proj.weight, model.aud_proj.weight, rtol=1e-3, atol=1e-4)


def _rewrite(path, out, *, drop=None, reshape=None, metadata=None):
    tensors = load_file(str(path))
    meta = read_metadata(path)
    raw = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in meta.items()}
    if drop:
        tensors.pop(drop)
    if reshape:
        tensors[reshape] = torch.zeros(3, 3)
    raw.update(metadata or {})
    save_file(tensors, str(out), metadata=raw)
    return out


@pytest.mark.parametrize(
    "kind, match",
    [
        ("missing", r"missing tensors aud_proj\.bias"),
        ("shape", r"shape mismatches aud_proj\.weight: checkpoint \(3, 3\) vs model \(64, 512\)"),
        ("method", "holds an unknown method 'mystery'"),
        ("format", "format '99' is not supported"),
        ("config", "does not build a 'noprior' model"),
    ],
)
def test_mismatches_name_the_problem(noprior_file, tmp_path, kind, match):
    _, path = noprior_file
    out = tmp_path / "bad.safetensors"
    if kind == "missing":
        _rewrite(path, out, drop="aud_proj.bias")
    elif kind == "shape":
        _rewrite(path, out, reshape="aud_proj.weight")
    elif kind == "method":
        _rewrite(path, out, metadata={"method": "mystery"})
    elif kind == "format":
        _rewrite(path, out, metadata={"streamloc_format": "99"})
    else:
        _rewrite(path, out, metadata={"config": json.dumps({"no_such_option": 1})})
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(out)


def test_expected_method_is_enforced(noprior_file):
    with pytest.raises(CheckpointError, match="holds a 'noprior' model, not 'ezvsl'"):
        load_checkpoint(noprior_file[1], method="ezvsl")


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("garbage.safetensors", b"\x00\x01not a checkpoint at all" * 10, "not a readable safetensors"),
        ("official.pth", b"PK\x03\x04 pretend zip", "convert it with `streamloc convert`"),
    ],
)
def test_corrupt_or_foreign_files(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_truncated_checkpoint(noprior_file, tmp_path):
    data = noprior_file[1].read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_plain_safetensors_is_not_a_streamloc_checkpoint(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a streamloc checkpoint"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_foreign_state_dict_is_read_without_unsafe_unpickling(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, plain)
    assert torch.equal(load_foreign_state_dict(plain)["model"]["w"], torch.ones(2))

    lightning_like = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"model.w": torch.ones(1)},
                "hyper_parameters": argparse.Namespace(lr=1e-4)}, lightning_like)
    with pytest.raises(CheckpointError, match="unsafe unpickling.*--trust-pickle"):
        load_foreign_state_dict(lightning_like)
    trusted = load_foreign_state_dict(lightning_like, trust_pickle=True)
    assert trusted["hyper_parameters"].lr == 1e-4

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not torch")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_foreign_state_dict(junk)
