"""Fixtures for the live-ingest tests: a private PulseAudio server and local camera streams.

PulseAudio (``shared/reference/av-testing.md`` §A): one session-scoped 16 kHz mono daemon is
started once (``pulse_daemon``); the function-scoped ``pulse`` fixture points this process at it
(PULSE_SERVER, XDG_RUNTIME_DIR, PULSE_RUNTIME_PATH and HOME, whose ``~/.asoundrc`` adds two ALSA
PCMs ``ci_mic_left``/``ci_mic_right``) and re-initialises PortAudio, which only scans devices
when it initialises. The environment is restored (and PortAudio re-initialised again) after each
test, so that tests of other packages running in the same process never see a changed HOME.
Tests that kill or reconfigure a server get their own function-scoped daemons
(``pulse48``, ``doomed_pulse``). Mic tests are skipped only when the ``pulseaudio`` binary is
missing.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from avtest_support import (  # noqa: E402
    MjpegServer,
    PulseDaemon,
    SilentServer,
    reinit_portaudio,
)


def _need_pulseaudio() -> None:
    if shutil.which("pulseaudio") is None:
        pytest.skip(
            "the `pulseaudio` binary is missing (apt-get install pulseaudio pulseaudio-utils "
            "libasound2-plugins libportaudio2): the microphone tests need a private sound server"
        )


@pytest.fixture(scope="session")
def pulse_daemon():
    """A private 16 kHz mono PulseAudio daemon for the whole session."""
    _need_pulseaudio()
    daemon = PulseDaemon(rate=16000, channels=1).start()
    yield daemon
    daemon.stop()


def _point_at(daemon: PulseDaemon, monkeypatch) -> None:
    for key, value in daemon.env.items():
        monkeypatch.setenv(key, value)
    reinit_portaudio()


@pytest.fixture
def pulse(pulse_daemon, monkeypatch):
    """This process talks to the session daemon for the duration of one test."""
    _point_at(pulse_daemon, monkeypatch)
    yield pulse_daemon
    monkeypatch.undo()
    reinit_portaudio()


@pytest.fixture
def pulse48(monkeypatch):
    """A separate 48 kHz mono daemon (the device rate differs from the 16 kHz model rate)."""
    _need_pulseaudio()
    daemon = PulseDaemon(rate=48000, channels=1).start()
    _point_at(daemon, monkeypatch)
    yield daemon
    monkeypatch.undo()
    reinit_portaudio()
    daemon.stop()


@pytest.fixture
def doomed_pulse(monkeypatch):
    """A function-scoped daemon that the test may kill or freeze (the session one survives)."""
    _need_pulseaudio()
    daemon = PulseDaemon(rate=16000, channels=1).start()
    _point_at(daemon, monkeypatch)
    yield daemon
    import signal

    daemon.kill(signal.SIGCONT)  # in case the test froze it
    monkeypatch.undo()
    reinit_portaudio()
    daemon.stop()


@pytest.fixture
def no_sound_server(tmp_path, monkeypatch):
    """PortAudio initialised with no sound server reachable (and no sound card on CI)."""
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.setenv("PULSE_RUNTIME_PATH", str(run / "pulse"))
    monkeypatch.setenv("PULSE_SERVER", f"unix:{run}/pulse/native")
    monkeypatch.setenv("HOME", str(tmp_path))
    reinit_portaudio()
    yield
    monkeypatch.undo()
    reinit_portaudio()


@pytest.fixture
def mjpeg_server():
    """An in-process MJPEG-over-HTTP camera at 30 fps on 127.0.0.1 (ephemeral port)."""
    server = MjpegServer(fps=30.0)
    yield server
    server.stop()


@pytest.fixture
def silent_server():
    """A TCP server that accepts and never answers."""
    server = SilentServer()
    yield server
    server.stop()
