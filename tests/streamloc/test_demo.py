"""`streamloc demo` / `run_demo`: the bundled clip through the full pipeline (unpaced with
``fast=True`` so the tests stay short), with a freshly saved EfficientNet-Lite0 NoPrior model and,
once it is bundled, the bundled one; clear one-line errors for a missing model or a bad clip."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest
import torch

from streamloc import cli
from streamloc import demo as demo_mod
from streamloc.demo import BUNDLED_CLIP, BUNDLED_MODEL, bundled_asset, run_demo
from streamloc.errors import CheckpointError, DeviceError
from streamloc.models import create_model
from streamloc.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module", autouse=True)
def _bundled_clip():
    if not bundled_asset(BUNDLED_CLIP).is_file():
        pytest.fail(f"the bundled demo clip streamloc/assets/demo/{BUNDLED_CLIP} is missing "
                    "(python -m training.data.avpairs_cli demo --out streamloc/assets/demo)")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("noprior", visual_backbone="efficientnet_lite0", freeze_visual=True)
    path = tmp_path_factory.mktemp("model") / "noprior_eff.safetensors"
    save_checkpoint(model, path, provenance={"note": "random init, test only"})
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_outputs(out: Path, summary: dict, model: Path) -> None:
    files = {k: Path(v) for k, v in summary["files"].items()}
    assert files == {"video": out / "demo.mp4", "jsonl": out / "demo.jsonl", "summary": out / "summary.json"}
    assert all(p.is_file() for p in files.values())
    assert json.loads(files["summary"].read_text()) == summary
    lines = files["jsonl"].read_text().splitlines()
    assert summary["ticks"] >= 1 and len(lines) == summary["ticks"] == summary["frames_written"]
    assert all(json.loads(line)["frame_size"] == [480, 640] for line in lines)
    with av.open(str(files["video"])) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        assert (c.streams.video[0].height, c.streams.video[0].width) == (480, 640)
        assert sum(1 for _ in c.decode(video=0)) == summary["ticks"]
    assert summary["model"]["sha256"] == _sha256(model) and summary["model"]["method"] == "noprior"
    clip = bundled_asset(BUNDLED_CLIP)
    assert summary["clip"]["bundled"] and summary["clip"]["sha256"] == _sha256(Path(str(clip)))
    assert [len(s["sounding"]) for s in summary["clip"]["timeline"]] == [1, 2, 1, 0, 1]
    assert summary["paced"] is False and summary["stop_reason"] == "end of media"
    assert set(summary["latency_ms"]) >= {"encoder", "total", "tick"}  # fast runs time every tick
    assert summary["latency_ms"]["total"]["n"] == summary["ticks"]


def test_run_demo_fast_with_a_fresh_model(tmp_path, model_file, one_thread, capsys):
    out = tmp_path / "out"
    summary = run_demo(out, model=model_file, fast=True, rate=5, threads=1)
    assert not summary["model"]["bundled"]
    _check_outputs(out, summary, model_file)
    text = capsys.readouterr().out
    assert "stopped: end of media" in text and "p50" in text and f"wrote {out / 'demo.mp4'}" in text


def test_run_demo_fast_with_the_bundled_model(tmp_path, one_thread):
    res = bundled_asset(BUNDLED_MODEL)
    if not res.is_file():
        pytest.skip(f"the bundled model streamloc/assets/demo/{BUNDLED_MODEL} is not built yet (being trained)")
    out = tmp_path / "out"
    summary = run_demo(out, fast=True, rate=5, threads=1, quiet=True)
    assert summary["model"]["bundled"]
    _check_outputs(out, summary, Path(str(res)))


def test_missing_bundled_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo_mod, "BUNDLED_MODEL", "no_such_model.safetensors")
    with pytest.raises(CheckpointError, match=r"bundled demo model .* pass --model") as err:
        run_demo(tmp_path / "out", fast=True, quiet=True)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
    assert cli.main(["demo", "--fast", "--out", str(tmp_path / "cli")]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("streamloc: error: the bundled demo model") and stderr.count("\n") == 1


def test_bad_model_or_clip_is_a_one_line_error(tmp_path, model_file, capsys):
    with pytest.raises(CheckpointError, match="does not exist"):
        run_demo(tmp_path / "o1", model=tmp_path / "nope.safetensors", quiet=True)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(DeviceError, match="bad.mp4"):
        run_demo(tmp_path / "o2", model=model_file, clip=bad, fast=True, quiet=True)
    assert cli.main(["demo", "--fast", "--model", str(model_file), "--clip", str(bad),
                     "--out", str(tmp_path / "o3")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_demo_end_to_end(tmp_path, model_file):
    out = tmp_path / "demo-out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "streamloc", "demo", "--fast", "--out", str(out), "--model",
                           str(model_file), "--rate", "5", "--threads", "1"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "stopped: end of media" in proc.stdout
    for name in ("demo.mp4", "demo.jsonl", "summary.json"):
        assert f"wrote {out / name}" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    _check_outputs(out, summary, model_file)


def test_display_without_a_display_fails_before_any_output(tmp_path, model_file, monkeypatch):
    from streamloc.io import sinks

    monkeypatch.setattr(sinks, "display_problem", lambda: "no display: DISPLAY is not set")
    with pytest.raises(DeviceError, match="run without --display"):
        run_demo(tmp_path / "out", model=model_file, display=True, fast=True, quiet=True)
    assert not (tmp_path / "out").exists()


def test_default_model_is_the_bundled_file(tmp_path, model_file, monkeypatch, one_thread):
    # stands in for the bundled checkpoint until it is trained (no fake file in the assets)
    real = demo_mod.bundled_asset
    monkeypatch.setattr(demo_mod, "bundled_asset", lambda name: model_file if name == BUNDLED_MODEL else real(name))
    out = tmp_path / "out"
    summary = run_demo(out, fast=True, rate=5, threads=1, quiet=True)
    assert summary["model"]["bundled"] and summary["model"]["path"] == str(model_file)
    _check_outputs(out, summary, model_file)
