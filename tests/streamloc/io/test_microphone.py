"""MicrophoneSource against a real (private) PulseAudio server through PortAudio's ALSA pulse PCM.

Known audio is played into the null sink with paplay and recorded through MicrophoneSource from
the sink's monitor; the recording is aligned by cross-correlation and compared sample by sample.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
import soxr

from avtest_support import align, chirp_noise, write_wav
from streamloc.errors import DeviceError, InputError
from streamloc.io.devices import describe_devices, list_audio_inputs
from streamloc.io.microphone import MicrophoneSource, resolve_input_device

pytestmark = pytest.mark.audio

LEAD_IN = 0.1


def record_while_playing(daemon, wav, mic: MicrophoneSource, settle: float = 0.15):
    """Start mic, play wav, wait; returns (all samples in the ring, first index, paplay spawn ns)."""
    mic.start()
    time.sleep(settle)
    t_spawn = time.monotonic_ns()
    player = daemon.play(wav)
    _, err = player.communicate(timeout=20)
    assert player.returncode == 0, err
    time.sleep(settle)
    ring = mic.ring
    x, first = ring.read_range(ring.oldest_index, ring.write_index)
    return x, first, t_spawn


def test_records_16k_bit_exact_with_adc_timestamps(pulse, tmp_path):
    sr = 16000
    sig = chirp_noise(sr, seconds=1.0, lead_in=LEAD_IN)
    wav = write_wav(tmp_path / "chirp16.wav", sig, sr)
    with MicrophoneSource("default", sample_rate=sr, ring_seconds=5) as mic:
        x, first, t_spawn = record_while_playing(pulse, wav, mic)
        stats = mic.stats()
        ring = mic.ring
        assert mic.device_rate == sr and not mic.resampling and mic.device_ring is None
        assert stats["callbacks"] > 10 and stats["input_overflows"] == 0
        assert ring.overflows == 0 and ring.dropped_samples == 0

        lag, peak = align(x.astype(np.float64), sig)
        got = x[lag : lag + len(sig)].astype(np.float64) * 32768.0
        err = np.abs(got - sig)
        snr = 10 * np.log10(np.mean(sig**2) / np.mean((got - sig) ** 2))
        print(f"16 kHz: peak {peak:.6f}, max err {err.max():.2f} LSB, identical "
              f"{np.mean(err == 0):.1%}, SNR {snr:.1f} dB, latency {mic.stream.latency * 1e3:.1f} ms")
        assert peak > 0.99999
        # Sample-exact up to 1 LSB of int16 (the sink mixes in the silent keep-alive stream).
        assert err.max() <= 1.0
        assert abs(np.mean(got - sig)) < 0.05 and snr > 75

        # The onset is stamped on the monotonic clock after paplay was spawned, not long after.
        onset = first + lag + int(LEAD_IN * sr)
        delay_ms = (ring.time_of(onset) - t_spawn) / 1e6
        print(f"paplay spawn -> onset in the ring: {delay_ms:.1f} ms")
        assert 0 < delay_ms < 400
        # Reading by time returns exactly the samples of that time range.
        t_on = ring.time_of(onset)
        y, y_first = ring.read(t_on, t_on + 500_000_000)
        assert y_first == onset and y.shape == (8000,)
        np.testing.assert_array_equal(y, x[onset - first : onset - first + 8000])
    assert mic.stream.closed


def test_device_rate_48k_is_resampled_to_16k(pulse48, tmp_path):
    dev_sr, sr = 48000, 16000
    sig48 = chirp_noise(dev_sr, seconds=1.0, lead_in=LEAD_IN)
    wav = write_wav(tmp_path / "chirp48.wav", sig48, dev_sr)
    with MicrophoneSource("default", sample_rate=sr, device_rate=dev_sr, ring_seconds=5) as mic:
        x, first, _ = record_while_playing(pulse48, wav, mic)
        assert mic.resampling and mic.device_rate == dev_sr and mic.ring.sample_rate == sr
        raw = mic.device_ring
        # The recording's 48 kHz phase is unknown: compare with the 3 possible decimation phases.
        best = max(
            (align(x.astype(np.float64), soxr.resample(sig48[k:] / 32768.0, dev_sr, sr)) + (k,)
             for k in range(3)),
            key=lambda r: r[1],
        )
        lag, peak, k = best
        print(f"48 kHz device -> 16 kHz: correlation {peak:.6f} (phase {k})")
        assert peak > 0.99
        # Stamps of the resampled ring agree with the device-rate ring's.
        raw_x, raw_first = raw.read_range(raw.oldest_index, raw.write_index)
        raw_lag, raw_peak = align(raw_x.astype(np.float64), sig48)
        assert raw_peak > 0.9999
        onset16 = first + lag + int(LEAD_IN * sr)
        onset48 = raw_first + raw_lag + int(LEAD_IN * dev_sr)
        skew_ms = (mic.ring.time_of(onset16) - raw.time_of(onset48)) / 1e6
        print(f"onset time 16 kHz ring vs 48 kHz ring: {skew_ms:+.2f} ms")
        assert abs(skew_ms) < 3.0


def test_mix_and_channel_selection(pulse, tmp_path):
    sr = 16000
    sig = chirp_noise(sr, seconds=0.4, lead_in=LEAD_IN, seed=3)
    wav = write_wav(tmp_path / "short.wav", sig, sr)
    with MicrophoneSource("default", channel="mix", ring_seconds=3) as mic:
        x, _, _ = record_while_playing(pulse, wav, mic, settle=0.1)
        assert mic.open_channels == 2 and mic.ring.channels == 1
        lag, peak = align(x.astype(np.float64), sig)
        # The mono sink is upmixed to 2 identical channels; their mean is the signal.
        assert np.abs(x[lag : lag + len(sig)] * 32768.0 - sig).max() <= 1.0
    with MicrophoneSource("default", channels=2, channel=1) as mic:
        mic.start()
        time.sleep(0.15)
        assert mic.ring.channels == 1 and mic.ring.write_index > 0
    with MicrophoneSource("default", channels=2) as mic:
        time.sleep(0.15)
        assert mic.ring.channels == 2 and mic.ring.read_last(10)[0].shape == (10, 2)


def test_device_by_index_and_listing(pulse):
    inputs = list_audio_inputs()
    names = [d.name for d in inputs]
    assert "default" in names and "ci_mic_left" in names and "ci_mic_right" in names
    default = next(d for d in inputs if d.name == "default")
    assert default.is_default and default.hostapi == "ALSA" and default.channels > 0
    assert resolve_input_device("DEFAULT").index == default.index  # case-insensitive exact
    assert resolve_input_device(str(default.index)).index == default.index
    with MicrophoneSource(default.index) as mic:
        time.sleep(0.15)
        assert mic.callbacks > 0 and mic.device_info.name == "default"
    with pytest.raises(DeviceError, match="no audio input device with index 999"):
        MicrophoneSource(999).start()
    text = describe_devices(max_camera_index=0)
    assert "ci_mic_left" in text and "default" in text


def test_unknown_name_lists_the_inputs(pulse):
    mic = MicrophoneSource("no such microphone")
    with pytest.raises(DeviceError) as e:
        mic.start()
    msg = str(e.value)
    assert "no audio input device matches 'no such microphone'" in msg
    assert "ci_mic_left" in msg and "default" in msg and "streamloc devices" in msg
    assert mic.stream is None


def test_ambiguous_name_lists_the_candidates(pulse):
    # ~/.asoundrc of the private HOME defines ALSA PCMs ci_mic_left and ci_mic_right.
    with pytest.raises(DeviceError) as e:
        MicrophoneSource("CI_MIC").start()
    msg = str(e.value)
    assert "ambiguous" in msg and "ci_mic_left" in msg and "ci_mic_right" in msg
    assert "pulse" not in msg.split("\n", 1)[1]  # only the candidates are listed
    with MicrophoneSource("mic_right") as mic:  # a unique part of the name works
        time.sleep(0.15)
        assert mic.device_info.name == "ci_mic_right" and mic.callbacks > 0


def test_no_sound_server_at_all(no_sound_server):
    import sounddevice as sd

    if any(d["max_input_channels"] > 0 for d in sd.query_devices()):
        pytest.skip("this machine has a real audio input device")
    assert list_audio_inputs() == []
    t = time.monotonic()
    with pytest.raises(DeviceError) as e:
        MicrophoneSource().start()
    assert time.monotonic() - t < 1.0
    assert "no audio input device" in str(e.value) and "sound server" in str(e.value)
    with pytest.raises(DeviceError, match="no audio input device"):
        MicrophoneSource("pulse").start()
    assert "none: no sound card or sound server" in describe_devices(max_camera_index=0)


def test_watchdog_reports_a_dead_server(doomed_pulse):
    errors = []
    mic = MicrophoneSource("default", watchdog_s=1.0, on_error=errors.append)
    mic.start()
    try:
        time.sleep(0.3)
        assert mic.callbacks > 0 and mic.error is None
        t = time.monotonic()
        doomed_pulse.kill(signal.SIGKILL)
        assert mic.error_event.wait(3.0)
        latency = time.monotonic() - t
        print(f"watchdog: daemon killed -> DeviceError in {latency * 1e3:.0f} ms")
        assert latency < 1.5
        assert isinstance(mic.error, DeviceError) and "stopped delivering audio" in str(mic.error)
        assert errors == [mic.error]
        assert mic.stream.closed
        assert mic.done.is_set() and not mic.running
        with pytest.raises(DeviceError):
            mic.raise_if_failed()
    finally:
        mic.stop()
    assert mic.stream.closed


def test_watchdog_reports_a_hung_server(doomed_pulse):
    """A frozen server (SIGSTOP): callbacks stop but the stream stays 'active'."""
    mic = MicrophoneSource("default", watchdog_s=0.5)
    mic.start()
    try:
        time.sleep(0.3)
        t = time.monotonic()
        doomed_pulse.kill(signal.SIGSTOP)
        assert mic.error_event.wait(3.0)
        latency = time.monotonic() - t
        print(f"watchdog: daemon frozen -> DeviceError in {latency * 1e3:.0f} ms")
        assert 0.4 < latency < 1.2
        assert "no audio for" in str(mic.error)
    finally:
        doomed_pulse.kill(signal.SIGCONT)
        mic.stop()
    assert mic.stream.closed


def test_parameter_validation():
    with pytest.raises(InputError):
        MicrophoneSource(sample_rate=0)
    with pytest.raises(InputError):
        MicrophoneSource(channel="left")
    with pytest.raises(InputError):
        MicrophoneSource(channels=2, channel=2)
    with pytest.raises(InputError):
        MicrophoneSource(watchdog_s=0)
