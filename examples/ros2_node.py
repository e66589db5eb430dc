"""A ROS 2 node publishing streamloc's per-object results.

Topics (one message per tick):
  ~/objects  std_msgs/String  JSON of `TickResult.to_record()` (ids, boxes, centroids, scores)
  ~/overlay  sensor_msgs/Image  the annotated frame (bgr8), when `publish_overlay` is true

Parameters: `model` (checkpoint path; empty: the bundled NoPrior model), `camera` (index or URL),
`mic` (name or index), `rate` (Hz), `publish_overlay` (bool).

    ros2 run <your_pkg> streamloc_node --ros-args -p model:=/path/model.safetensors

This file imports without ROS installed (the rclpy parts load inside `main`), so it can be
tested and read anywhere; `results_to_json` and `overlay_to_image_fields` are plain functions.
"""

from __future__ import annotations

import json

import numpy as np

from streamloc.types import TickResult


def results_to_json(result: TickResult) -> str:
    """The `~/objects` payload."""
    return json.dumps(result.to_record(), separators=(",", ":"))


def overlay_to_image_fields(image_bgr: np.ndarray) -> dict:
    """Field values of a sensor_msgs/Image for a BGR uint8 frame (no cv_bridge needed)."""
    h, w = image_bgr.shape[:2]
    return {"height": int(h), "width": int(w), "encoding": "bgr8", "is_bigendian": 0,
            "step": int(w * 3), "data": np.ascontiguousarray(image_bgr).tobytes()}


def main(args=None) -> None:  # pragma: no cover - needs a ROS 2 installation
    import threading

    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from streamloc import Localizer, load_bundled_model
    from streamloc.io.camera import CameraSource
    from streamloc.io.microphone import MicrophoneSource
    from streamloc.pipeline import StreamingPipeline
    from streamloc.render import render_tick

    class StreamlocNode(Node):
        def __init__(self):
            super().__init__("streamloc")
            model = self.declare_parameter("model", "").value
            camera = self.declare_parameter("camera", "0").value
            mic = self.declare_parameter("mic", "default").value
            rate = float(self.declare_parameter("rate", 10.0).value)
            self.publish_overlay = bool(self.declare_parameter("publish_overlay", False).value)
            self.objects_pub = self.create_publisher(String, "~/objects", 10)
            self.overlay_pub = self.create_publisher(Image, "~/overlay", 2)
            localizer = Localizer.from_checkpoint(model) if model else Localizer(load_bundled_model())
            video = CameraSource(int(camera) if str(camera).isdigit() else camera)
            audio = MicrophoneSource(mic, sample_rate=localizer.sample_rate)
            self.pipeline = StreamingPipeline(localizer, video, audio, rate=rate, sinks=[self])
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()

        # The node is itself a sink of the pipeline.
        closed = False

        def write(self, frame, result):
            self.objects_pub.publish(String(data=results_to_json(result)))
            if self.publish_overlay:
                msg = Image(**overlay_to_image_fields(render_tick(frame, result)))
                msg.header.stamp = self.get_clock().now().to_msg()
                self.overlay_pub.publish(msg)

        def close(self):
            self.closed = True

        def _run(self):
            with self.pipeline:
                self.pipeline.run()

        def destroy_node(self):
            self.pipeline.stop("node shutdown")
            self.thread.join(5)
            super().destroy_node()

    rclpy.init(args=args)
    node = StreamlocNode()
    try:
        rclpy.spin(node)
    finally:
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":  # pragma: no cover
    main()
