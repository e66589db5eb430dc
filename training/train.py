"""One training loop for every method: single process or `torchrun` DDP (gloo on CPU, NCCL on GPU).

    python -m training.train --method noprior --data synthetic-smoke --steps 30 --out runs/np
    torchrun --nproc-per-node 2 -m training.train --method dsol --data synthetic-smoke --steps 5

Semantics: every step draws ONE global batch (deterministic from --seed and the step), each rank
takes its contiguous shard, and gradients are averaged over ranks before the optimizer step — the
same update a single process makes on the global batch whenever the loss is a mean of per-sample
terms and BatchNorm statistics are frozen (`--freeze-bn`; SyncBatchNorm does not run on CPU).
Contrastive losses use the negatives of the local shard, as the official EZ-VSL/NoPrior code does.

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
    log = open(out / "train.log", "a") if ddp.is_main else None
    progress = None
    if ddp.is_main and not args.quiet:
        from tqdm import tqdm

        progress = tqdm(total=args.steps, initial=start_step, desc=f"train {args.method}", unit="step")
    history = []
    t_start = time.perf_counter()
    try:
        for step in range(start_step, args.steps):
            model.train()
            if args.freeze_bn:
                _freeze_batchnorm(model)
            batch = ddp.shard(synthetic_batches(method, batch_size, args.seed, step))
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
            if args.eval_every and (step + 1) % args.eval_every == 0:
                record["eval_loss"] = ddp.average_scalar(evaluate(method, args, device, ddp))
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
        _save(method, optimizer, args.steps, out, args, save_checkpoint)
    ddp.close()
    return {"history": history, "seconds": time.perf_counter() - t_start, "out": str(out)}


def evaluate(method, args, device, ddp: Distributed) -> float:
    """Loss on held-out synthetic batches (seeds disjoint from training)."""
    model = method.model
    model.eval()
    with torch.no_grad():
        batch = ddp.shard(synthetic_batches(method, args.batch_size or 8, args.seed + 7919, 0))
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        loss, _ = method.loss(batch)
    return float(loss)


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
    p.add_argument("--data", default="synthetic-smoke", choices=["synthetic-smoke"],
                   help="training data (synthetic-smoke: a tiny learnable synthetic task)")
    p.add_argument("--steps", type=int, default=30)
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
        result = train(args)
    except (StreamlocError, FloatingPointError, ValueError) as exc:
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
