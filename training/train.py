"""One training loop for every method: single process or `torchrun` DDP (gloo on CPU, NCCL on GPU).

    python -m training.train --method noprior --data synthetic-smoke --steps 30 --out runs/np
    torchrun --nproc-per-node 2 -m training.train --method dsol --data synthetic-smoke --steps 5

Semantics: every step draws ONE global batch (deterministic from --seed and the step), each rank
takes its contiguous shard, and gradients are averaged over ranks before the optimizer step — the
same update a single process makes on the global batch whenever the loss is a mean of per-sample
terms and BatchNorm statistics are frozen (`--freeze-bn`; SyncBatchNorm does not run on CPU).
Contrastive losses use the negatives of the local shard, as the official EZ-VSL/NoPrior code does.

Data (--data / --val-data): `synthetic-smoke`, or a dataset of `training.data.datasets` given as
`FORMAT:ROOT[:ANNOTATIONS]` (ANNOTATIONS relative to the working directory, else to ROOT):

    vggss:ROOT:vggss.json                 VggssDataset (frames/<id>.jpg, audio/<id>.wav)
    flickr:ROOT[:Annotations|test.csv]    FlickrSoundNetDataset (ids = the XML files of the
                                          annotations dir, default ROOT/Annotations, or a test csv)
    vggsound-pairs:ROOT:pairing.csv       VggsoundMixtureDataset (k sources per row, waveform sum)
    music-avgn:ROOT:music_solo.json       MusicAvgnDataset (music_solo.json or music_duet.json)
    music-dsol:ROOT:solotest.json         MusicDsolDataset (DSOL's MUSIC layout)

Items become the method's batch through `method.collate` (training/methods/collate.py). A
`DistributedSampler` (shuffled with --seed, `set_epoch` every epoch, drop_last) gives each rank its
shard of every global batch of --batch-size items; training runs --epochs passes over the dataset
(default: the method's paper epochs) or --steps steps when given. --eval-every N evaluates the
mean loss over --val-data every N steps.

Outputs in --out: `model.safetensors` (streamloc checkpoint, loadable by `streamloc run --model`),
`state.pt` (optimizer state, step and RNG state for --resume; tensors only, read with
weights_only=True) and `train.log` (one JSON line per logged step).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs (values parsed as JSON when possible; dotted keys build nested dicts)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"error: option {pair!r} must look like key=value")
        key, value = pair.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _parse_value(value)
    return out


def _merge(base: dict, override: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Distributed:
    """Rank/world info and the collective ops the loop needs (no-ops in a single process)."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, params) -> None:
        if not self.enabled:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world)

    def average_scalar(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world

    def shard(self, batch: dict[str, Any]) -> dict[str, Any]:
        if not self.enabled:
            return batch
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                n = value.shape[0]
                if n % self.world:
                    raise SystemExit(f"error: global batch {n} is not divisible by {self.world} processes")
                per = n // self.world
                out[key] = value[self.rank * per:(self.rank + 1) * per]
            else:
                out[key] = value
        return out

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _freeze_batchnorm(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


DATA_FORMATS = {
    "vggss": "VggssDataset, ANNOTATIONS = vggss.json (required)",
    "flickr": "FlickrSoundNetDataset, ANNOTATIONS = annotations dir or flickr test csv (optional)",
    "vggsound-pairs": "VggsoundMixtureDataset, ANNOTATIONS = pairing csv (required)",
    "music-avgn": "MusicAvgnDataset, ANNOTATIONS = music_solo.json / music_duet.json (required)",
    "music-dsol": "MusicDsolDataset, ANNOTATIONS = solotest.json / duettest.json (required)",
}


class DataSpecError(ValueError):
    """A --data / --val-data value that names no usable dataset."""


def parse_data_spec(spec: str) -> tuple[str, Path, Path | None]:
    """`FORMAT:ROOT[:ANNOTATIONS]` -> (format, root, annotations or None), checked on disk."""
    parts = spec.split(":", 2)
    fmt = parts[0]
    if fmt not in DATA_FORMATS or len(parts) < 2 or not parts[1]:
        raise DataSpecError(f"bad data spec {spec!r}: use synthetic-smoke or FORMAT:ROOT[:ANNOTATIONS] "
                            f"with FORMAT one of {', '.join(DATA_FORMATS)}")
    root = Path(parts[1])
    if not root.is_dir():
        raise DataSpecError(f"data spec {spec!r}: root {str(root)!r} is not a directory")
    ann = None
    if len(parts) == 3 and parts[2]:
        ann = Path(parts[2])
        if not ann.is_absolute() and not ann.exists():
            ann = root / ann
        if not ann.exists():
            raise DataSpecError(f"data spec {spec!r}: annotations {parts[2]!r} not found "
                                f"(relative paths: the working directory, then ROOT)")
    elif fmt != "flickr":
        raise DataSpecError(f"data spec {spec!r}: {fmt} needs annotations ({DATA_FORMATS[fmt]})")
    return fmt, root, ann


def build_dataset(spec: str, method):
    """The torch Dataset of a --data spec, windows sized for `method`'s model."""
    from training.data import datasets as D
    from training.methods.collate import audio_seconds

    fmt, root, ann = parse_data_spec(spec)
    media = {"duration": audio_seconds(method)}
    if fmt == "vggss":
        return D.VggssDataset(root, ann, **media)
    if fmt == "flickr":
        if ann is not None and ann.is_file():
            return D.FlickrSoundNetDataset(root, test_csv=ann, **media)
        ann_dir = ann if ann is not None else root / "Annotations"
        ids = sorted(p.stem for p in Path(ann_dir).glob("*.xml"))
        if not ids:
            raise DataSpecError(f"data spec {spec!r}: no <id>.xml annotation files in {str(ann_dir)!r}")
        return D.FlickrSoundNetDataset(root, ids=ids, annotations_dir=ann_dir.resolve(), **media)
    if fmt == "vggsound-pairs":
        return D.VggsoundMixtureDataset(root, ann, mixture="sum", **media)
    if fmt == "music-avgn":
        return D.MusicAvgnDataset(root, ann, **media)
    return D.MusicDsolDataset(root, ann, **media)


def make_loader(dataset, method, batch_size: int, ddp: "Distributed", args, *, shuffle: bool):
    """A DataLoader of per-rank shards (global batch = `batch_size`) with a DistributedSampler."""
    from torch.utils.data import DataLoader, DistributedSampler

    if batch_size % ddp.world:
        raise ValueError(f"global batch {batch_size} is not divisible by {ddp.world} processes")
    per_rank = batch_size // ddp.world
    sampler = DistributedSampler(dataset, num_replicas=ddp.world, rank=ddp.rank, shuffle=shuffle,
                                 seed=args.seed, drop_last=True)
    if len(sampler) < per_rank:
        raise ValueError(f"dataset of {len(dataset)} items is smaller than one global batch of {batch_size}")
    return DataLoader(dataset, batch_size=per_rank, sampler=_Resumable(sampler), drop_last=True,
                      collate_fn=method.collate, num_workers=args.workers,
                      persistent_workers=False)


class _Resumable(torch.utils.data.Sampler):
    """Wraps a DistributedSampler; `skip` indices are dropped from the next pass (resume)."""

    def __init__(self, inner):
        self.inner = inner
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self):
        it = iter(self.inner)
        for _ in range(self.skip):
            next(it, None)
        self.skip = 0
        return it

    def __len__(self) -> int:
        return len(self.inner)


def _dataset_batches(loader, start_step: int):
    """(epoch, batch) from `start_step` on, forever; `set_epoch` before every pass."""
    per_epoch = len(loader)
    epoch, offset = divmod(start_step, per_epoch)
    sampler = loader.sampler
    while True:
        sampler.set_epoch(epoch)
        sampler.skip = offset * loader.batch_size
        offset = 0
        for batch in loader:
            yield epoch, batch
        epoch += 1


def synthetic_batches(method, batch_size: int, seed: int, step: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return method.synthetic_batch(batch_size, g)


def train(args: argparse.Namespace) -> dict:
    from streamloc.models.checkpoint import load_checkpoint, save_checkpoint
    from training.methods import create_method

    device = torch.device(args.device)
    ddp = Distributed(device)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if ddp.is_main:
        out.mkdir(parents=True, exist_ok=True)

    model_options = _parse_options(args.model_option)
    if args.data == "synthetic-smoke" and not args.resume:
        from training.methods.base import _REGISTRY, _load

        _load()
        if args.method in _REGISTRY:
            model_options = _merge(_REGISTRY[args.method].smoke_model_options, model_options)
    hparams = _parse_options(args.hparam)
    synthetic = args.data == "synthetic-smoke"
    if args.lr is not None:
        hparams["lr"] = args.lr
    start_step = 0
    state_path = out / "state.pt"
    if args.resume:
        model = load_checkpoint(out / "model.safetensors")
        method = create_method(args.method, model=model, hparams=hparams)
    else:
        method = create_method(args.method, hparams=hparams, **model_options)
    model = method.model.to(device)
    optimizer = method.make_optimizer()
    if args.resume:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])

    params = [p for group in optimizer.param_groups for p in group["params"]]
    batch_size = args.batch_size or method.hparams.batch_size
    loader = val_loader = None
    if not synthetic:
        loader = make_loader(build_dataset(args.data, method), method, batch_size, ddp, args, shuffle=True)
        epochs = args.epochs if args.epochs is not None else method.hparams.epochs
        total_steps = args.steps if args.steps is not None else epochs * len(loader)
        batches = _dataset_batches(loader, start_step)
    else:
        total_steps = args.steps if args.steps is not None else 30
    if args.val_data is not None and args.val_data != "synthetic-smoke":
        val_loader = make_loader(build_dataset(args.val_data, method), method, batch_size, ddp, args,
                                 shuffle=False)
    elif args.eval_every and not synthetic and args.val_data is None:
        raise ValueError("--eval-every with dataset training needs --val-data")
    log = open(out / "train.log", "a") if ddp.is_main else None
    progress = None
    if ddp.is_main and not args.quiet:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=start_step, desc=f"train {args.method}", unit="step")
    history = []
    t_start = time.perf_counter()
    try:
        for step in range(start_step, total_steps):
            model.train()
            if args.freeze_bn:
                _freeze_batchnorm(model)
            epoch = None
            if loader is None:
                batch = ddp.shard(synthetic_batches(method, batch_size, args.seed, step))
            else:
                epoch, batch = next(batches)  # already this rank's shard
            batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            loss, logs = method.loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ddp.average_gradients(params)
            optimizer.step()
            value = ddp.average_scalar(float(loss.detach()))
            history.append(value)
            record = {"step": step + 1, "loss": value, **{k: float(v) for k, v in logs.items()}}
            if epoch is not None:
                record["epoch"] = epoch
            if args.eval_every and (step + 1) % args.eval_every == 0:
                record["eval_loss"] = ddp.average_scalar(evaluate(method, args, device, ddp, val_loader))
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{value:.4f}")
            if ddp.is_main and args.save_every and (step + 1) % args.save_every == 0:
                _save(method, optimizer, step + 1, out, args, save_checkpoint)
    finally:
        if progress is not None:
            progress.close()
        if log is not None:
            log.close()
    if ddp.is_main:
        _save(method, optimizer, total_steps, out, args, save_checkpoint)
    ddp.close()
    return {"history": history, "seconds": time.perf_counter() - t_start, "out": str(out)}


def evaluate(method, args, device, ddp: Distributed, loader=None) -> float:
    """Mean loss over this rank's shard of the held-out `loader` (--val-data), or on held-out
    synthetic batches (seeds disjoint from training) without one."""
    model = method.model
    model.eval()
    with torch.no_grad():
        if loader is None:
            batches = [ddp.shard(synthetic_batches(method, args.batch_size or 8, args.seed + 7919, 0))]
        else:
            loader.sampler.set_epoch(0)
            batches = loader
        total, count = 0.0, 0
        for batch in batches:
            batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            loss, _ = method.loss(batch)
            total += float(loss)
            count += 1
    return total / max(count, 1)


def _save(method, optimizer, step: int, out: Path, args, save_checkpoint) -> None:
    provenance = {"training_command": " ".join(sys.argv), "method": args.method, "data": args.data,
                  "steps": step, "seed": args.seed}
    save_checkpoint(method.model, out / "model.safetensors", provenance=provenance)
    tmp = out / "state.pt.tmp"
    torch.save({"optimizer": optimizer.state_dict(), "step": step, "torch_rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, out / "state.pt")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, help="ezvsl, noprior, mixloc, dsol, avgn")
    formats = "; ".join(f"{k}: {v}" for k, v in DATA_FORMATS.items())
    p.add_argument("--data", default="synthetic-smoke", metavar="SPEC",
                   help="training data: synthetic-smoke (a tiny learnable synthetic task) or "
                        f"FORMAT:ROOT[:ANNOTATIONS] with FORMAT one of {formats}")
    p.add_argument("--val-data", default=None, metavar="SPEC",
                   help="held-out data for --eval-every (same syntax as --data)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (default 30 on synthetic-smoke; on a dataset, --epochs passes)")
    p.add_argument("--epochs", type=int, default=None,
                   help="passes over the dataset when --steps is not given (default: the method's)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per rank")
    p.add_argument("--batch-size", type=int, default=8, help="global batch size (split over processes)")
    p.add_argument("--lr", type=float, default=None, help="override the paper's learning rate")
    p.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE", help="method hyper-parameter")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="model config option, e.g. image.size=[112,112] or audio.window_seconds=1.0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm statistics frozen")
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from --out/model.safetensors + state.pt")
    p.add_argument("--out", default="runs/train")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from streamloc.errors import StreamlocError

    try:
        for spec in (args.data, args.val_data):
            if spec is not None and spec != "synthetic-smoke":
                parse_data_spec(spec)
        result = train(args)
    except (StreamlocError, FloatingPointError, ValueError, FileNotFoundError) as exc:
        print(f"training: error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        h = result["history"]
        if h:
            print(f"done: {len(h)} steps in {result['seconds']:.1f} s, loss {h[0]:.4f} -> {h[-1]:.4f}; "
                  f"checkpoint {result['out']}/model.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
