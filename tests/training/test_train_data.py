"""Training on datasets in the official layouts: `method.collate` and `--data FORMAT:ROOT:ANN`."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch

from training import train
from training.methods import create_method
from training.methods.base import _REGISTRY, _load

METHODS = ["ezvsl", "noprior", "mixloc", "dsol", "avgn"]
CLASSES = ["cat meowing", "dog barking", "playing piano"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _vggss(root, n=6, seconds=1.0, sr=22050):
    """A tiny VGG-SS test set: frames/<id>.jpg, audio/<id>.wav and vggss.json (normalised xyxy)."""
    rng = np.random.default_rng(0)
    (root / "frames").mkdir(parents=True)
    (root / "audio").mkdir()
    entries = []
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n):
        sid = f"vid{i:03d}_000{i}"
        frame = rng.integers(60, 200, (48, 64, 3), dtype=np.uint8)
        frame[10:30, 20:40] = (255 * (i % 2), 80, 255 * (i % 3 == 0))
        cv2.imwrite(str(root / "frames" / f"{sid}.jpg"), frame)
        wave = 0.3 * np.sin(2 * np.pi * (300 + 200 * (i % 3)) * t) + 0.01 * rng.standard_normal(len(t))
        sf.write(str(root / "audio" / f"{sid}.wav"), wave.astype(np.float32), sr, subtype="PCM_16")
        entries.append({"file": sid, "class": CLASSES[i % 3], "bbox": [[0.3, 0.2, 0.6, 0.65]]})
    (root / "vggss.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return _vggss(tmp_path_factory.mktemp("vggss"))


def _method(name, **extra):
    _load()
    opts = {**_REGISTRY[name].smoke_model_options, "image": {"size": [64, 64]}, **extra}
    if name != "mixloc":  # an audio dict replaces the config; mixloc's default is log-mel 0.96 s
        opts["audio"] = {"window_seconds": 0.5}
    return create_method(name, **opts)


@pytest.mark.parametrize("name", METHODS)
def test_collate_matches_synthetic_batch_format(dataset_root, name):
    from training.data import VggssDataset
    from training.methods.collate import audio_seconds

    method = _method(name)
    ds = VggssDataset(dataset_root, dataset_root / "vggss.json", duration=audio_seconds(method))
    batch = method.collate([ds[i] for i in range(4)])
    synthetic = method.synthetic_batch(2, torch.Generator().manual_seed(0))
    assert list(batch) == list(synthetic)
    for key, value in synthetic.items():
        assert batch[key].shape[0] == 4, key
        assert batch[key].shape[1:] == value.shape[1:], key
        assert batch[key].dtype == value.dtype, key
    loss, _ = method.loss(batch)
    assert torch.isfinite(loss)


def test_collate_names_missing_fields(dataset_root):
    from training.data import VggssDataset

    method = _method("noprior")
    item = dict(VggssDataset(dataset_root, dataset_root / "vggss.json", duration=0.5)[0])
    with pytest.raises(ValueError, match="'audio'"):
        method.collate([{k: v for k, v in item.items() if k != "audio"}] * 2)
    with pytest.raises(ValueError, match="'frame'"):
        method.collate([{k: v for k, v in item.items() if k != "frame"}] * 2)
    avgn = _method("avgn")
    with pytest.raises(ValueError, match="class_ids"):
        avgn.collate([{**item, "class_ids": np.array([-1])}] * 2)


@pytest.mark.parametrize("name", ["noprior", "dsol"])
def test_train_on_vggss_layout(dataset_root, tmp_path, name, capsys):
    out = tmp_path / "run"
    spec = f"vggss:{dataset_root}:vggss.json"
    argv = ["--method", name, "--data", spec, "--val-data", spec, "--eval-every", "2", "--steps", "3",
            "--batch-size", "2", "--out", str(out), "--quiet", "--model-option", "image.size=[64,64]",
            "--model-option", "audio.window_seconds=0.5"]
    assert train.main(argv) == 0, capsys.readouterr().err
    assert (out / "model.safetensors").is_file() and (out / "state.pt").is_file()
    log = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in log)
    assert [r["epoch"] for r in log] == [0, 0, 0]
    assert np.isfinite(log[1]["eval_loss"])


def test_epochs_cover_the_dataset_and_shuffle_deterministically(dataset_root, tmp_path):
    from training.data import VggssDataset

    method = _method("ezvsl")
    ds = VggssDataset(dataset_root, dataset_root / "vggss.json", duration=0.5)

    class Args:
        seed, workers = 3, 0

    ddp = train.Distributed(torch.device("cpu"))
    loader = train.make_loader(ds, method, 2, ddp, Args, shuffle=True)
    def rows(batch):  # one fingerprint per item
        return [round(v, 4) for v in batch["waveforms"][:, :100].sum(1).tolist()]

    order = []
    gen = train._dataset_batches(loader, 0)
    for _ in range(2 * len(loader)):
        epoch, batch = next(gen)
        order.append((epoch, rows(batch)))
    first = [v for e, r in order if e == 0 for v in r]
    second = [v for e, r in order if e == 1 for v in r]
    assert len(first) == 6 and sorted(first) == sorted(second)  # every item once per epoch
    assert first != second  # reshuffled by set_epoch
    again = train._dataset_batches(train.make_loader(ds, method, 2, ddp, Args, shuffle=True), 0)
    assert [rows(next(again)[1]) for _ in range(6)] == [r for _, r in order]  # seeded
    # resuming at step 4 (epoch 1, batch 1) gives the batches of the straight run
    resumed = train._dataset_batches(train.make_loader(ds, method, 2, ddp, Args, shuffle=True), 4)
    assert [rows(next(resumed)[1]) for _ in range(2)] == [r for _, r in order[4:6]]


@pytest.mark.parametrize("spec", ["nonsense", "vggss:/definitely/not/here:vggss.json", "vggss:{root}",
                                  "vggss:{root}:missing.json", "kinetics:{root}:x.json"])
def test_bad_data_spec_is_a_one_line_error(dataset_root, tmp_path, spec, capsys):
    argv = ["--method", "noprior", "--data", spec.format(root=dataset_root), "--out", str(tmp_path), "--quiet"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("training: error:") and "\n" not in err
