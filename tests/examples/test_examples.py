"""The examples run for real: the robot loop and the offline script on a generated A/V file, and
the ROS 2 node imports (and formats its messages) without ROS installed."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from streamloc.models import create_model
from streamloc.models.checkpoint import save_checkpoint

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI to make test media")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    clip = root / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=15:duration=5",
                    "-f", "lavfi", "-i", "sine=frequency=500:sample_rate=48000:duration=5", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "1", str(clip)],
                   check=True, timeout=60)
    torch.manual_seed(0)
    model = create_model("noprior", tau1=1.0, image={"size": [112, 112]},
                         audio={"sample_rate": 16000, "window_seconds": 1.0})
    ckpt = root / "model.safetensors"
    save_checkpoint(model, ckpt)
    return clip, ckpt


def test_robot_loop_follows_objects(assets, capsys):
    clip, ckpt = assets
    assert _load("robot_loop").main(["--media", str(clip), "--model", str(ckpt), "--seconds", "4"]) == 0
    out = capsys.readouterr().out
    assert "following object" in out and "final pan" in out


def test_offline_video(assets, tmp_path):
    clip, ckpt = assets
    out, jsonl = tmp_path / "a.mp4", tmp_path / "a.jsonl"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "offline_video.py"), str(clip), "--model", str(ckpt),
                           "--out", str(out), "--jsonl", str(jsonl)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0 and len(jsonl.read_text().splitlines()) >= 5


def test_ros2_node_imports_without_ros():
    ros = _load("ros2_node")
    from streamloc.types import SoundingObject, TickResult

    obj = SoundingObject(id=3, heatmap=np.zeros((4, 6), np.float32), mask=np.ones((4, 6), bool),
                         box=(0, 0, 6, 4), centroid=(2.5, 1.5), score=0.7)
    payload = json.loads(ros.results_to_json(TickResult(frame_size=(4, 6), sound_map=np.zeros((2, 2), np.float32),
                                                        objects=[obj])))
    assert payload["objects"][0]["id"] == 3 and payload["objects"][0]["box"] == [0, 0, 6, 4]
    fields = ros.overlay_to_image_fields(np.zeros((4, 6, 3), np.uint8))
    assert (fields["height"], fields["width"], fields["step"], len(fields["data"])) == (4, 6, 18, 72)
