"""The training loop: DDP over 2 gloo processes equals one process, resume is exact, and the
checkpoints it writes run in the Localizer."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from streamloc import Localizer
from training import train

SMALL = ["--model-option", "image.size=[64,64]", "--quiet", "--batch-size", "4"]


def _run(out, *extra, steps=3, method="dsol"):
    argv = ["--method", method, "--steps", str(steps), "--out", str(out), *SMALL, *extra]
    assert train.main(argv) == 0
    return load_file(str(out / "model.safetensors"))


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_two_process_gloo_ddp_equals_one_process(tmp_path):
    # DSOL stage one: a per-pair BCE, so the global-batch update decomposes over shards
    single = _run(tmp_path / "single", "--freeze-bn")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "training.train",
           "--method", "dsol", "--steps", "3", "--out", str(tmp_path / "ddp"), "--freeze-bn", *SMALL]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    untrained = _run(tmp_path / "zero", "--freeze-bn", steps=0)
    moved = _max_diff(single, untrained)
    assert moved > 1e-4  # training really moved the parameters (Adam, lr 1e-4, 3 steps)
    # float summation order differs between 1 and 2 processes; Adam amplifies it a little
    assert _max_diff(single, ddp) < 0.1 * moved


def test_resume_continues_exactly(tmp_path):
    straight = _run(tmp_path / "straight", steps=4)
    _run(tmp_path / "resumed", steps=2)
    resumed = _run(tmp_path / "resumed", "--resume", steps=4)
    assert _max_diff(straight, resumed) < 1e-6
    log = (tmp_path / "resumed" / "train.log").read_text().splitlines()
    assert len(log) == 4


@pytest.mark.parametrize("method", ["ezvsl", "noprior", "mixloc", "dsol", "avgn"])
def test_smoke_checkpoint_runs_in_the_localizer(tmp_path, method):
    _run(tmp_path, steps=2, method=method)
    loc = Localizer.from_checkpoint(tmp_path / "model.safetensors", short_audio="tile")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(48000)).astype(np.float32)
    result = loc.localize(frame, audio, 48000)
    assert result.frame_size == (120, 160)
    assert loc.model.checkpoint_metadata["provenance"]["method"] == method
