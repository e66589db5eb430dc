"""Real local stand-ins for a microphone and a camera (no mocks), used by conftest.py.

* :class:`PulseDaemon` -- a private PulseAudio server with a null sink whose monitor is the
  default source, exactly as in ``shared/reference/av-testing.md`` §A (own XDG_RUNTIME_DIR and
  HOME, daemon.conf pinning the rate, a silent null-source + loopback keep-alive,
  ``suspend-sink 1/0``, readiness = ``pactl info`` answers and the monitor delivers bytes).
* :class:`MjpegServer` -- a pure-Python multipart/x-mixed-replace JPEG server on 127.0.0.1 whose
  frames carry their counter and their creation time (monotonic ms) as black/white blocks.
* :class:`SilentServer` -- accepts TCP connections and never answers.
* test signals (chirp + band-limited noise) and block codes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------- PulseAudio

PULSE_ENV_KEYS = ("XDG_RUNTIME_DIR", "PULSE_RUNTIME_PATH", "HOME", "PULSE_SERVER")

# Two ALSA PCMs whose names share "ci_mic": a real ambiguity for device-name matching.
ASOUNDRC = """
pcm.ci_mic_left {
    type pulse
    hint { show on description "streamloc CI microphone (left)" }
}
pcm.ci_mic_right {
    type pulse
    hint { show on description "streamloc CI microphone (right)" }
}
"""


class PulseDaemon:
    """A private PulseAudio daemon (``pulseaudio -n -F ci.pa``) with a null sink ``vsink``."""

    def __init__(self, rate: int = 16000, channels: int = 1, asoundrc: str | None = ASOUNDRC):
        self.rate = rate
        self.channels = channels
        self.dir = Path(tempfile.mkdtemp(prefix="streamloc-pulse-"))
        self.run = self.dir
        self.home = self.dir / "home"
        (self.dir / "pulse").mkdir()
        (self.home / ".config" / "pulse").mkdir(parents=True)
        (self.home / ".config" / "pulse" / "daemon.conf").write_text(
            f"default-sample-rate = {rate}\n"
            f"alternate-sample-rate = {rate}\n"
            "exit-idle-time = -1\n"
            "realtime-scheduling = no\n"
            "high-priority = no\n"
            "resample-method = soxr-vhq\n"
        )
        if asoundrc:
            (self.home / ".asoundrc").write_text(asoundrc)
        cmap = {1: "mono", 2: "front-left,front-right"}[channels]
        self.channel_map = cmap
        spec = f"rate={rate} channels={channels} channel_map={cmap}"
        (self.dir / "ci.pa").write_text(
            "load-module module-native-protocol-unix auth-anonymous=1\n"
            f"load-module module-null-sink sink_name=vsink {spec}\n"
            f"load-module module-null-source source_name=silence {spec}\n"
            "load-module module-loopback source=silence sink=vsink latency_msec=20 "
            "source_dont_move=true sink_dont_move=true\n"
            "set-default-sink vsink\n"
            "set-default-source vsink.monitor\n"
            "suspend-sink vsink 1\n"
            "suspend-sink vsink 0\n"
        )
        self.env = {
            "XDG_RUNTIME_DIR": str(self.dir),
            "PULSE_RUNTIME_PATH": str(self.dir / "pulse"),
            "HOME": str(self.home),
            "PULSE_SERVER": f"unix:{self.dir}/pulse/native",
        }
        self.proc: subprocess.Popen | None = None
        self.ready_s = float("nan")

    def full_env(self) -> dict:
        return {**os.environ, **self.env}

    def start(self, timeout: float = 15.0) -> "PulseDaemon":
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [
                "pulseaudio", "-n", "-F", str(self.dir / "ci.pa"), "--daemonize=no",
                "--use-pid-file=no", f"--log-target=file:{self.dir}/pulse.log",
            ],
            env=self.full_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        env = self.full_env()
        while True:
            if self.proc.poll() is not None:
                log = (self.dir / "pulse.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"pulseaudio exited with {self.proc.returncode}:\n{log}")
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"pulseaudio not ready after {timeout} s")
            r = subprocess.run(["pactl", "info"], env=env, capture_output=True, timeout=5)
            if r.returncode == 0 and self._monitor_delivers(env):
                break
            time.sleep(0.02)
        self.ready_s = time.monotonic() - t0
        return self

    @staticmethod
    def _monitor_delivers(env: dict) -> bool:
        p = subprocess.Popen(
            ["parec", "--device=vsink.monitor", "--raw", "--latency-msec=10"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        try:
            got = b""
            deadline = time.monotonic() + 2.0
            os.set_blocking(p.stdout.fileno(), False)
            while len(got) < 64 and time.monotonic() < deadline:
                chunk = p.stdout.read(4096)
                if chunk:
                    got += chunk
                elif p.poll() is not None:
                    break
                else:
                    time.sleep(0.005)
            return len(got) >= 64
        finally:
            p.kill()
            p.wait()

    def play(self, wav: Path) -> subprocess.Popen:
        """Start ``paplay --latency-msec=50 --device=vsink wav`` (returns the process)."""
        return subprocess.Popen(
            ["paplay", "--latency-msec=50", "--device=vsink",
             f"--channel-map={self.channel_map}", str(wav)],
            env=self.full_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            else:
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


def reinit_portaudio() -> None:
    """PortAudio scans devices only when it initialises: re-initialise after an env change."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


# ----------------------------------------------------------------------------- signals
def chirp_noise(sr: int, seconds: float = 1.0, lead_in: float = 0.1, seed: int = 0) -> np.ndarray:
    """100 ms of silence, then a chirp + band-limited noise; int16 values (as float64)."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0, f1 = 200.0, 0.4 * sr
    chirp = np.sin(2 * np.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t**2))
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(n)
    spec = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spec[(freqs < 100) | (freqs > 0.45 * sr)] = 0
    noise = np.fft.irfft(spec, n)
    noise /= np.abs(noise).max()
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    x = (0.35 * chirp + 0.35 * noise) * fade
    x = np.concatenate([np.zeros(int(lead_in * sr)), x, np.zeros(int(0.05 * sr))])
    return np.round(x * 32767 * 0.9)


def write_wav(path: Path, samples_int16: np.ndarray, sr: int) -> Path:
    import soundfile as sf

    sf.write(str(path), samples_int16.astype(np.int16), sr, subtype="PCM_16")
    return path


def align(recorded: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """Lag of ``reference`` inside ``recorded`` (FFT cross-correlation) and the normalised peak."""
    n = len(recorded) + len(reference)
    nfft = 1 << (n - 1).bit_length()
    xc = np.fft.irfft(np.fft.rfft(recorded, nfft) * np.conj(np.fft.rfft(reference, nfft)), nfft)
    xc = xc[: len(recorded) - len(reference) + 1]
    lag = int(np.argmax(xc))
    seg = recorded[lag : lag + len(reference)]
    peak = float(np.dot(seg, reference) / (np.linalg.norm(seg) * np.linalg.norm(reference) + 1e-12))
    return lag, peak


# ----------------------------------------------------------------------------- camera
BLOCK = 20  # px per bit block
BITS_PER_ROW = 16


def encode_blocks(values: list[int], width: int = 320, height: int = 240) -> np.ndarray:
    """A BGR frame with one row of 16 black/white blocks per 16-bit value (MSB first)."""
    img = np.full((height, width, 3), 96, np.uint8)
    for row, v in enumerate(values):
        for b in range(BITS_PER_ROW):
            if (v >> (BITS_PER_ROW - 1 - b)) & 1:
                y, x = row * BLOCK, b * BLOCK
                img[y : y + BLOCK, x : x + BLOCK] = 255
            else:
                y, x = row * BLOCK, b * BLOCK
                img[y : y + BLOCK, x : x + BLOCK] = 0
    return img


def decode_blocks(img: np.ndarray, rows: int) -> list[int]:
    gray = img.mean(axis=2) if img.ndim == 3 else img
    out = []
    for row in range(rows):
        v = 0
        for b in range(BITS_PER_ROW):
            y, x = row * BLOCK + BLOCK // 4, b * BLOCK + BLOCK // 4
            bit = gray[y : y + BLOCK // 2, x : x + BLOCK // 2].mean() > 128
            v = (v << 1) | int(bit)
        out.append(v)
    return out


def stamp_frame(counter: int, t_ms: int) -> np.ndarray:
    """Frame with rows: counter (16 bits), time ms high 16 bits, time ms low 16 bits."""
    t_ms &= 0xFFFFFFFF
    return encode_blocks([counter & 0xFFFF, t_ms >> 16, t_ms & 0xFFFF])


def read_stamp(img: np.ndarray) -> tuple[int, int]:
    c, hi, lo = decode_blocks(img, 3)
    return c, (hi << 16) | lo


class MjpegServer:
    """MJPEG over HTTP (multipart/x-mixed-replace) at ``fps`` on 127.0.0.1, ephemeral port."""

    def __init__(self, fps: float = 30.0, quality: int = 85):
        import cv2

        self.fps = fps
        self.quality = quality
        self.counter = -1
        self.jpeg = b""
        self.cond = threading.Condition()
        self.running = True
        self.paused = False  # True: keep connections open but send no frame (a frozen camera)
        self._cv2 = cv2
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                last = -1
                try:
                    while server.running:
                        with server.cond:
                            fresh = server.cond.wait_for(
                                lambda: server.counter != last or not server.running, 0.2
                            )
                            if not server.running:
                                break
                            if not fresh:
                                continue
                            last, jpeg = server.counter, server.jpeg
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                            + str(len(jpeg)).encode()
                            + b"\r\n\r\n"
                            + jpeg
                            + b"\r\n"
                        )
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/cam.mjpg"
        self._produce_once()
        self._producer = threading.Thread(target=self._produce, daemon=True)
        self._serve = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._producer.start()
        self._serve.start()

    def _produce_once(self) -> None:
        counter = self.counter + 1
        img = stamp_frame(counter, time.monotonic_ns() // 1_000_000)
        ok, buf = self._cv2.imencode(".jpg", img, [self._cv2.IMWRITE_JPEG_QUALITY, self.quality])
        with self.cond:
            self.counter, self.jpeg = counter, buf.tobytes()
            self.cond.notify_all()

    def _produce(self) -> None:
        period = 1.0 / self.fps
        t_next = time.monotonic() + period
        while self.running:
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t_next += period
            if not self.paused:
                self._produce_once()

    def stop(self) -> None:
        """Stop producing and close every connection (clients see the stream end)."""
        if not self.running:
            return
        self.running = False
        with self.cond:
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/cam.mjpg"
        self.conns: list[socket.socket] = []
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def stop(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            c.close()


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on (connections are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ----------------------------------------------------------------------------- media clips
def make_clip(
    path: Path,
    seconds: float = 3.0,
    fps: int = 30,
    sr: int = 48000,
    events: tuple[float, ...] = (0.5, 1.5, 2.5),
    audio: bool = True,
    size: tuple[int, int] = (320, 240),
) -> Path:
    """An H.264 + AAC mp4 written with PyAV: a moving test pattern whose frames at ``events``
    are all white, and a 1 kHz beep of 100 ms starting exactly at each event (silence between).
    """
    import av

    w, h = size
    n_frames = int(round(seconds * fps))
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23", "g": str(fps)}
        if audio:
            aus = out.add_stream("aac", rate=sr)
            aus.layout = "mono"
            aus.bit_rate = 96000
        flash = {int(round(e * fps)) for e in events}
        yy, xx = np.mgrid[0:h, 0:w]
        video_packets = []
        for k in range(n_frames):
            if k in flash:
                img = np.full((h, w, 3), 255, np.uint8)
            else:
                img = np.zeros((h, w, 3), np.uint8)
                img[..., 0] = (xx * 255 // w).astype(np.uint8)
                img[..., 1] = (yy * 255 // h).astype(np.uint8)
                x0 = (k * 7) % (w - 40)
                img[100:140, x0 : x0 + 40] = (0, 0, 200)
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = k
            video_packets.extend(vs.encode(frame))
        video_packets.extend(vs.encode(None))
        for p in video_packets:
            out.mux(p)
        if audio:
            n = int(round(seconds * sr))
            t = np.arange(n) / sr
            x = np.zeros(n, np.float32)
            for e in events:
                gate = (t >= e) & (t < e + 0.1)
                x[gate] = 0.5 * np.sin(2 * np.pi * 1000 * (t[gate] - e))
            for start in range(0, n, 1024):
                chunk = x[start : start + 1024]
                af = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                af.sample_rate = sr
                af.pts = start
                for p in aus.encode(af):
                    out.mux(p)
            for p in aus.encode(None):
                out.mux(p)
    return path


def beep_onsets(x: np.ndarray, threshold: float = 0.1, smooth: int = 8) -> np.ndarray:
    """Sample indices where a smoothed envelope of ``x`` rises above ``threshold``."""
    env = np.convolve(np.abs(x), np.ones(smooth) / smooth, mode="same") > threshold
    return np.flatnonzero(env[1:] & ~env[:-1]) + 1
