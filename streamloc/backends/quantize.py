"""Post-training int8 quantization of the ONNX export (ONNX Runtime static quantization, CPU).

The encoder pair's convolutions (and its fully connected layers) are quantized to int8 with
per-channel signed weights and unsigned activations (U8S8, the layout ONNX Runtime's CPU kernels run
fastest with AVX512-VNNI / AVX-VNNI); activation ranges come from calibration windows run through
the float model (min-max). Depthwise convolutions and the heads after the encoders (normalisation,
cosine maps, sigmoid masks) stay in float32, so the maps the IOI step reads are cosines computed in
float from int8-computed features. An accuracy guard compares the int8 file with the float one on
the calibration inputs and keeps a whole encoder in float32 when its int8 version disagrees
(:func:`quantize_onnx`).

Calibration data should look like what the model will see. The default is
:func:`calibration_windows` over the clip bundled with the package (real camera-like frames and a
real mixture, preprocessed exactly as at run time); pass your own windows for another domain.

>>> from streamloc.models import create_model
>>> model = create_model("noprior", image={"size": (64, 64)})
>>> windows = calibration_windows(model, count=2)
>>> [tuple(t.shape) for t in windows[0]]
[(1, 3, 64, 64), (1, 1, 257, 276)]
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from streamloc.errors import BackendError

__all__ = ["QUANTIZED_OPS", "QUANTIZER", "depthwise_convs", "module_nodes", "bundled_clip", "calibration_windows", "calibration_hash", "quantize_onnx"]

#: Operator types quantized by :func:`quantize_onnx`: where the encoder pair's FLOPs are.
QUANTIZED_OPS = ("Conv", "Gemm")
#: The quantization recipe (part of the cache key: a change here rebuilds cached int8 files).
QUANTIZER = {"format": "QDQ", "activations": "uint8", "weights": "int8 per-channel", "calibration": "minmax",
             "ops": list(QUANTIZED_OPS), "float": "depthwise Conv", "min_agreement": 0.99}


def _decode_clip(path: Path) -> tuple[list[tuple[float, np.ndarray]], np.ndarray, int]:
    """(frames as (time s, BGR uint8), mono float32 audio, its sample rate) of an A/V file, in one
    demuxing pass; the audio is down-mixed by ``av.AudioResampler`` as :mod:`streamloc.io.media` does."""
    import av

    frames, chunks = [], []
    try:
        with av.open(str(path)) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            rate = int(audio.rate)
            mono = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for f in container.decode(video, audio):
                if isinstance(f, av.VideoFrame):
                    frames.append((float(f.time), f.to_ndarray(format="bgr24")))
                else:
                    chunks += [m.to_ndarray().reshape(-1) for m in mono.resample(f)]
            chunks += [m.to_ndarray().reshape(-1) for m in mono.resample(None)]  # flush
    except (av.FFmpegError, IndexError, OSError) as exc:
        raise BackendError(f"cannot read calibration clip {path}: {type(exc).__name__}: {exc} "
                           "(it needs a video and an audio stream)") from exc
    if not frames or not chunks:
        raise BackendError(f"calibration clip {path} has no video frames or no audio")
    return frames, np.concatenate(chunks).astype(np.float32, copy=False), rate


@contextlib.contextmanager
def bundled_clip():
    """The path of the clip bundled with the package (the default calibration data)."""
    from importlib import resources

    from streamloc.bundled import BUNDLED_CLIP, bundled_asset

    with resources.as_file(bundled_asset(BUNDLED_CLIP)) as path:
        if not path.is_file():
            raise BackendError(f"the bundled calibration clip {path} is missing; pass your own calibration "
                               "data or reinstall streamloc")
        yield path


def calibration_windows(model, clip: str | os.PathLike | None = None, count: int = 16
                        ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` model-input pairs ``(images (1, 3, H, W), spectrograms (1, ...))`` from an A/V clip.

    Windows end at evenly spaced times from one window length to the clip's end; each pairs the
    frame shown at that time with the audio window before it, preprocessed by the model's own
    image settings and audio front-end. ``clip`` defaults to the package's bundled demo clip.
    """
    from streamloc.features import preprocess_images, resample

    if count < 1:
        raise BackendError(f"calibration needs at least one window, got count={count}")
    if clip is None:
        with bundled_clip() as path:
            frames, audio, rate = _decode_clip(path)
    else:
        frames, audio, rate = _decode_clip(Path(clip))
    cfg = model.config.audio
    audio = resample(audio, rate, cfg.sample_rate) if rate != cfg.sample_rate else audio
    n = cfg.num_samples
    if audio.shape[0] < n:
        raise BackendError(f"calibration clip is {audio.shape[0] / cfg.sample_rate:.2f} s long; "
                           f"the model needs {cfg.window_seconds} s windows")
    frontend = model.make_frontend()
    times = np.array([t for t, _ in frames])
    ends = np.linspace(n, audio.shape[0], count).round().astype(int)
    out = []
    with torch.inference_mode():
        for end in ends:
            frame = frames[int(np.abs(times - end / cfg.sample_rate).argmin())][1]
            images = preprocess_images([frame], model.config.image)
            spec = frontend(torch.from_numpy(np.ascontiguousarray(audio[end - n:end]))[None])
            out.append((images.clone(), spec.clone()))
    return out


def calibration_hash(windows: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> str:
    """SHA-256 over the calibration inputs (part of the int8 cache key)."""
    h = hashlib.sha256()
    for pair in windows:
        for t in pair:
            a = t.detach().to("cpu", torch.float32).contiguous().numpy()
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
    return h.hexdigest()


def depthwise_convs(path: str | os.PathLike) -> list[str]:
    """Names of the grouped (depthwise) Conv nodes of an ONNX file. They are left in float32: one
    uint8 scale per tensor fits their per-channel activation ranges badly, and they hold a few
    percent of the FLOPs."""
    import onnx

    out = []
    for node in onnx.load(str(path)).graph.node:
        if node.op_type == "Conv" and next((a.i for a in node.attribute if a.name == "group"), 1) > 1:
            out.append(node.name)
    return out


def module_nodes(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{top-level submodule name: [quantizable node names]}`` of an ONNX file exported by
    torch's dynamo exporter (which records each node's module path as ``namespace`` metadata)."""
    import onnx

    out: dict[str, list[str]] = {}
    for node in onnx.load(str(path)).graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        ns = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
        parts = ns.split("/")
        module = parts[1].split(":")[0].strip() if len(parts) > 1 else ""
        out.setdefault(module, []).append(node.name)
    return out


def _agreement(fp32_path: Path, int8_path: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    """The lowest Pearson correlation, over outputs and calibration feeds, between the two files."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    a, b = (ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for p in (fp32_path, int8_path))
    worst = 1.0
    for feed in feeds:
        for x, y in zip(a.run(None, feed), b.run(None, feed)):
            x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
            if x.std() == 0 or y.std() == 0:
                worst = min(worst, 1.0 if np.allclose(x, y, atol=1e-3) else 0.0)
            else:
                worst = min(worst, float(np.corrcoef(x, y)[0, 1]))
    return worst


def quantize_onnx(fp32_path: str | os.PathLike, out_path: str | os.PathLike,
                  windows: Sequence[tuple[torch.Tensor, torch.Tensor]], *, batch: int = 1,
                  input_names: Sequence[str] = ("images", "spectrograms"), min_agreement: float = 0.99) -> dict:
    """Write the int8 (QDQ) version of the float ONNX file ``fp32_path`` to ``out_path``.

    ``windows``: calibration inputs with batch 1; they are grouped ``batch`` at a time to match the
    exported static batch (the last group is padded by repetition).

    Accuracy guard: after quantizing, every output is compared with the float file's on the
    calibration inputs; if the lowest correlation is below ``min_agreement``, the quantization is
    redone with one top-level submodule kept in float32 (the smallest first, e.g. a frozen
    EfficientNet-Lite0 whose int8 maps correlate only ~0.85 with float), and the first result that
    agrees is kept. Returns ``{"float_modules": [...], "agreement": r, "tried": [...]}``; raises
    BackendError when no variant agrees (use fp32 for that model).
    """
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:  # pragma: no cover - part of onnxruntime
        raise BackendError(f"onnxruntime.quantization is not available: {exc}") from exc
    if not windows:
        raise BackendError("int8 quantization needs at least one calibration window")
    pairs = [tuple(t.detach().to("cpu", torch.float32).numpy() for t in w) for w in windows]
    feeds = []
    for start in range(0, len(pairs), batch):
        group = pairs[start:start + batch]
        group += [group[-1]] * (batch - len(group))
        feeds.append({name: np.concatenate([g[i] for g in group]) for i, name in enumerate(input_names)})

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    tried = []
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        depthwise = depthwise_convs(pre)
        modules = module_nodes(pre)
        variants = [()] + [(m,) for m in sorted(modules, key=lambda m: len(modules[m])) if m]
        for keep in variants:
            exclude = sorted(set(depthwise).union(*(modules[m] for m in keep)))
            quantize_static(
                str(pre), str(out_path), _Reader(), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=exclude,
            )
            agreement = _agreement(fp32_path, out_path, feeds)
            tried.append({"float_modules": list(keep), "agreement": round(agreement, 5)})
            if agreement >= min_agreement:
                return {"float_modules": list(keep), "agreement": agreement, "tried": tried}
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f"int8 quantization of {fp32_path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        pre.unlink(missing_ok=True)
    out_path.unlink(missing_ok=True)
    raise BackendError(f"int8 quantization of {fp32_path} disagrees with float32 (output correlation below "
                       f"{min_agreement}: {tried}); run this model in fp32")
