"""A robot-style control loop embedding streamloc through its Python API.

The pipeline runs in a background thread and hands every tick to a callback; the control loop
reads the newest result at its own rate and turns the head (pan) towards the loudest sounding
object, following it by its stable id. Replace `Head.command` with your robot's actuator call.

    python examples/robot_loop.py --media clip.mp4 --model model.safetensors --seconds 20
    python examples/robot_loop.py --camera 0 --mic default --model model.safetensors
"""

from __future__ import annotations

import argparse
import threading
from dataclasses import dataclass

from streamloc import Localizer, load_bundled_model
from streamloc.pipeline import StreamingPipeline
from streamloc.types import TickResult


@dataclass
class Head:
    """A pan axis with a field of view; `command` is where a real robot would move a motor."""

    fov_deg: float = 60.0
    pan_deg: float = 0.0
    gain: float = 0.5

    def command(self, error_deg: float) -> float:
        self.pan_deg += self.gain * error_deg
        return self.pan_deg


class LatestResult:
    """Thread-safe mailbox: the pipeline thread writes, the control loop reads the newest."""

    def __init__(self):
        self._lock = threading.Lock()
        self._result: TickResult | None = None

    def put(self, result: TickResult) -> None:
        with self._lock:
            self._result = result

    def get(self) -> TickResult | None:
        with self._lock:
            return self._result


def choose_target(result: TickResult, follow_id: int | None):
    """Keep following the same object id while it sounds; otherwise take the strongest."""
    if not result.objects:
        return None
    for obj in result.objects:
        if obj.id == follow_id and obj.centroid is not None:
            return obj
    with_position = [o for o in result.objects if o.centroid is not None]
    return max(with_position, key=lambda o: o.score) if with_position else None


def pan_error_deg(result: TickResult, obj, head: Head) -> float:
    """Horizontal angle of the object's centroid from the image centre, in degrees."""
    width = result.frame_size[1]
    return (obj.centroid[0] / width - 0.5) * head.fov_deg


def control_loop(mailbox: LatestResult, head: Head, stop: threading.Event, hz: float = 20.0) -> None:
    follow_id = None
    while not stop.is_set():
        result = mailbox.get()
        if result is not None:
            target = choose_target(result, follow_id)
            if target is None:
                follow_id = None
            else:
                follow_id = target.id
                pan = head.command(pan_error_deg(result, target, head))
                print(f"following object {target.id} (score {target.score:+.2f}) -> pan {pan:+6.1f} deg")
        stop.wait(1.0 / hz)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="streamloc checkpoint (default: the bundled NoPrior model)")
    p.add_argument("--media")
    p.add_argument("--camera", default="0")
    p.add_argument("--mic", default="default")
    p.add_argument("--seconds", type=float, default=None)
    args = p.parse_args(argv)

    localizer = Localizer.from_checkpoint(args.model) if args.model else Localizer(load_bundled_model())
    if args.media:
        from streamloc.io.media import MediaSource

        video, audio = MediaSource(args.media, sample_rate=localizer.sample_rate), None
    else:
        from streamloc.io.camera import CameraSource
        from streamloc.io.microphone import MicrophoneSource

        camera = int(args.camera) if args.camera.isdigit() else args.camera
        video = CameraSource(camera)
        audio = MicrophoneSource(args.mic, sample_rate=localizer.sample_rate)

    mailbox, head, stop = LatestResult(), Head(), threading.Event()
    pipeline = StreamingPipeline(localizer, video, audio, rate=10, duration=args.seconds, on_tick=mailbox.put)
    controller = threading.Thread(target=control_loop, args=(mailbox, head, stop), daemon=True)
    with pipeline:
        controller.start()
        try:
            summary = pipeline.run()
        finally:
            stop.set()
            controller.join()
    print(f"stopped: {summary['stop_reason']}; final pan {head.pan_deg:+.1f} deg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
