"""The whole live path on real local parts: an MJPEG-over-HTTP camera read by OpenCV and a
PortAudio microphone on a private PulseAudio server, through StreamingPipeline into JSONL and MP4
sinks; then the sound server dies mid-run: the watchdog error ends the run within ~1 s and every
output is flushed and closed."""

from __future__ import annotations

import json
import threading
import time

import av
import pytest
import torch

from streamloc import Localizer
from streamloc.errors import DeviceError
from streamloc.io.camera import CameraSource
from streamloc.io.microphone import MicrophoneSource
from streamloc.io.sinks import AnnotatedVideoWriter, JsonlSink
from streamloc.models import create_model
from streamloc.pipeline import StreamingPipeline

pytestmark = pytest.mark.audio


@pytest.fixture(scope="module")
def localizer():
    torch.manual_seed(0)
    model = create_model("noprior", image={"size": [112, 112]},
                         audio={"sample_rate": 16000, "window_seconds": 1.0})
    loc = Localizer(model)
    loc.warmup()
    return loc


def test_sound_server_dies_mid_run(tmp_path, doomed_pulse, mjpeg_server, localizer):
    jsonl, mp4 = tmp_path / "live.jsonl", tmp_path / "live.mp4"
    camera = CameraSource(mjpeg_server.url, open_timeout_s=3, read_timeout_s=3)
    mic = MicrophoneSource("default", sample_rate=16000, watchdog_s=1.0)
    sinks = [JsonlSink(jsonl), AnnotatedVideoWriter(mp4, fps=5, audio_rate=16000)]
    pipe = StreamingPipeline(localizer, camera, mic, sinks=sinks, rate=5, duration=30)
    killed_at = []

    def kill_after_ticks():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not jsonl.exists() or len(jsonl.read_text().splitlines()) < 4):
            time.sleep(0.05)
        killed_at.append(time.monotonic())
        doomed_pulse.kill()

    killer = threading.Thread(target=kill_after_ticks, daemon=True)
    with pytest.raises(DeviceError) as info:
        with pipe:
            killer.start()
            pipe.run()
    ended = time.monotonic()
    killer.join(5)
    assert killed_at, "the pipeline never produced 4 ticks"
    assert ended - killed_at[0] < 2.0  # watchdog 1 s + one tick
    assert "microphone" in str(info.value).lower() or "audio" in str(info.value).lower()
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) >= 4 and all(r["frame_size"] == [240, 320] for r in records)
    assert all(r["audio_window_ns"][1] - r["audio_window_ns"][0] == pytest.approx(1e9, abs=1e6) for r in records)
    with av.open(str(mp4)) as container:  # closed properly: a playable file with both streams
        assert len(container.streams.audio) == 1
        assert sum(1 for _ in container.decode(container.streams.video[0])) == len(records)
    assert sinks[0].closed and sinks[1].closed
