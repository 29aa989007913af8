"""The command line and the training loop (EDSR's and NLSN's recipe).

Recipe defaults (EDSR, Lim et al. 2017; NLSN, Mei et al. 2021): L1 loss, Adam (betas 0.9,
0.999, eps 1e-8), lr 1e-4 halved every 200 epochs of 1000 iterations (``--lr-step``
200000 iterations), batch 16, HR patches of 48 x scale pixels, 1000 epochs (``--iters``
1000000), flips and 90-degree rotations, rgb_range 1.

Randomness: the model's initial weights come from ``--seed``; every training sample's
crop and augmentation from a seed made of (``--seed``, rank, its place in the rank's
sample stream); NLSA's rotations, at each iteration, from a generator seeded with
(``--seed``, rank, iteration) (each rank hashes with its own stream, as the README
recommends under DDP). A run is therefore a function of its arguments, and ``--resume``
continues one exactly: it restores the weights, Adam's moments, the schedule and the
iteration, and the random streams follow from the iteration.

Distributed: under ``torchrun`` (WORLD_SIZE > 1) each process trains on its share of
every batch (``--batch-size`` is the global batch) through DistributedDataParallel (NCCL
on CUDA, gloo on the CPU); the images are shared out by a ``DistributedSampler`` each
epoch. Rank 0 validates, logs and saves.

Files in ``--save DIR``: ``checkpoint.pt`` (everything ``--resume`` needs), ``model.pt``
(weights and configuration only), both written to a temporary file and renamed into place,
and ``log.csv`` (iter, loss, lr, val_psnr_y, seconds). Both .pt files load with
``NLSN.from_file`` (for --arch nlsn / edsr-nlsa), in the upscaler, and in
``python -m nlsa_triton.evaluate`` (any --arch).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .._backend import BACKENDS
from ..models.variants import ARCHS, build_model, model_config
from .data import DataError, PatchDataset, find_pairs

CHECKPOINT, MODEL, LOG = "checkpoint.pt", "model.pt", "log.csv"
LOG_FIELDS = ("iter", "loss", "lr", "val_psnr_y", "seconds")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nlsa_triton.train",
                                description="Train NLSN or a Table 1 variant with EDSR's recipe.")
    p.add_argument("--data", type=Path, required=True,
                   help="DIV2K layout (ROOT/DIV2K_train_HR, ROOT/DIV2K_train_LR_bicubic/X<S>) or a folder of "
                        "HR images (LR made by torch's antialiased bicubic)")
    p.add_argument("--save", type=Path, required=True, help="folder for checkpoint.pt, model.pt and log.csv")
    p.add_argument("--arch", choices=ARCHS, default="nlsn")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=2)
    p.add_argument("--n-feats", type=_positive_int, default=256)
    p.add_argument("--n-resblocks", type=_positive_int, default=32)
    p.add_argument("--res-scale", type=_positive_float, default=0.1)
    p.add_argument("--n-hashes", type=_positive_int, default=4, help="NLSA hash rounds (default 4)")
    p.add_argument("--chunk-size", type=_positive_int, default=144, help="NLSA chunk size (default 144)")
    p.add_argument("--rgb-range", type=_positive_float, default=1.0)
    p.add_argument("--patch-size", type=_positive_int, default=None,
                   help="HR patch size, a multiple of the scale (default 48 x scale)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="global batch, split over the processes")
    p.add_argument("--iters", type=_positive_int, default=1_000_000, help="iterations in all (default 1000000)")
    p.add_argument("--lr", type=_positive_float, default=1e-4)
    p.add_argument("--lr-step", type=_positive_int, default=200_000, help="halve the lr every N iterations")
    p.add_argument("--val-data", type=Path, default=None, help="benchmark root (ROOT/<set>/HR, LR_bicubic/X<S>)")
    p.add_argument("--val-sets", default="Set5", help="comma-separated sets under --val-data (default Set5)")
    p.add_argument("--val-every", type=_positive_int, default=1000)
    p.add_argument("--save-every", type=_positive_int, default=1000)
    p.add_argument("--log-every", type=_positive_int, default=100)
    p.add_argument("--device", default=None, help="default: cuda (this rank's) if available, else cpu")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="NLSA backend")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="bf16 autocast (CUDA only)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="data loader processes (default 0: in the main one)")
    p.add_argument("--cache", action="store_true",
                   help="keep decoded images in memory (fast for small sets; DIV2K's 800 take about 7 GB)")
    p.add_argument("--resume", action="store_true", help=f"continue from --save's {CHECKPOINT}")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (a hash, so nearby parts give unrelated streams)."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class SampleStream:
    """The (image, seed) keys of this rank's samples: epochs of a DistributedSampler's
    order, one after another; batch ``i`` is keys ``[i * b, (i + 1) * b)``."""

    def __init__(self, n_images: int, batch: int, seed: int, rank: int, world: int):
        self.sampler = torch.utils.data.DistributedSampler(
            range(n_images), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch, self.seed, self.rank = batch, seed, rank
        self.per_epoch = len(self.sampler)
        self._epoch, self._order = None, None

    def _at(self, k: int) -> tuple[int, int]:
        epoch = k // self.per_epoch
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._epoch, self._order = epoch, list(self.sampler)
        return self._order[k % self.per_epoch], _seed(self.seed, self.rank, k)

    def batches(self, start: int, stop: int) -> "_Batches":
        """Batches ``start`` to ``stop - 1``, made as the loader asks for them (a million
        iterations' keys would take gigabytes)."""
        return _Batches(self, start, stop)


class _Batches:
    def __init__(self, stream: SampleStream, start: int, stop: int):
        self.stream, self.start, self.stop = stream, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        b = self.stream.batch
        for i in range(self.start, self.stop):
            yield [self.stream._at(k) for k in range(i * b, (i + 1) * b)]


def _collate(samples):
    lrs, hrs = zip(*samples)
    return torch.stack(lrs), torch.stack(hrs)


def _atomic_save(obj, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def _log(message: str) -> None:
    try:
        from tqdm import tqdm
        tqdm.write(message, file=sys.stderr)
    except ImportError:
        print(message, file=sys.stderr)


class Run:
    """One process's share of a training run."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.distributed = self.world > 1
        local = int(os.environ.get("LOCAL_RANK", "0"))
        name = args.device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(name)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", local)
        if args.amp == "bf16" and self.device.type != "cuda":
            raise SystemExit(f"error: --amp bf16 needs a CUDA device (got {self.device})")
        if args.batch_size % self.world:
            raise SystemExit(f"error: --batch-size {args.batch_size} does not split over {self.world} processes")
        self.main = self.rank == 0

    # -- set-up --------------------------------------------------------------------------

    def check_data(self):
        a = self.args
        a.patch_size = a.patch_size or 48 * a.scale
        if a.patch_size % a.scale:
            raise DataError(f"--patch-size {a.patch_size} must be a multiple of --scale {a.scale}")
        self.pairs = find_pairs(a.data, a.scale, a.patch_size)
        self.val = []
        if a.val_data is not None:
            from ..evaluate.core import find_benchmark_set

            self.val = [(name, find_benchmark_set(a.val_data, name, a.scale))
                        for name in filter(None, a.val_sets.split(","))]

    def build(self):
        a = self.args
        torch.manual_seed(a.seed)  # the initial weights
        self.model = build_model(a.arch, a.scale, n_feats=a.n_feats, n_resblocks=a.n_resblocks,
                                 res_scale=a.res_scale, rgb_range=a.rgb_range, n_hashes=a.n_hashes,
                                 chunk_size=a.chunk_size, backend=a.backend).to(self.device)
        self.config = model_config(self.model, a.arch)
        self.net = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8)
        self.schedule = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=a.lr_step, gamma=0.5)
        self.iteration = 0
        self.started_seconds = 0.0

    def resume(self):
        path = self.args.save / CHECKPOINT
        if not path.is_file():
            raise SystemExit(f"error: --resume: no {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["config"] != self.config:
            raise SystemExit(f"error: --resume: {path} was trained with {state['config']}, "
                             f"these arguments give {self.config}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.iteration, self.started_seconds = state["iteration"], state["seconds"]
        torch.set_rng_state(state["rng"])
        if self.main:
            _log(f"resumed {path} at iteration {self.iteration}")

    def checkpoint(self, seconds: float):
        if not self.main:
            return
        save = self.args.save
        weights = {k: t.detach().cpu() for k, t in self.model.state_dict().items()}
        _atomic_save({"model": weights, "config": self.config}, save / MODEL)
        _atomic_save({
            "model": weights, "config": self.config, "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "iteration": self.iteration, "seconds": seconds,
            "rng": torch.get_rng_state(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
        }, save / CHECKPOINT)

    # -- validation ------------------------------------------------------------------------

    def validate(self) -> float:
        from ..evaluate.core import measure
        from ..upscale.images import read_rgb

        self.model.eval()
        psnrs = []
        for name, images in self.val:
            results = [measure(self.model, name, image, self.args.scale, self.args.rgb_range, device=self.device,
                               seed=self.args.seed, read_image=read_rgb, log=_log)[0] for image in images]
            mean = sum(r.psnr_y for r in results) / len(results)
            _log(f"iter {self.iteration}: {name} x{self.args.scale} PSNR-Y {mean:.3f} dB, "
                 f"SSIM-Y {sum(r.ssim_y for r in results) / len(results):.4f}")
            psnrs += [r.psnr_y for r in results]
        self.model.train()
        return sum(psnrs) / len(psnrs)

    # -- the loop ----------------------------------------------------------------------------

    def train(self):
        a = self.args
        per_rank = a.batch_size // self.world
        stream = SampleStream(len(self.pairs), per_rank, a.seed, self.rank, self.world)
        dataset = PatchDataset(self.pairs, a.scale, a.patch_size, a.rgb_range, cache=a.cache)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=stream.batches(self.iteration, a.iters),
                                             num_workers=a.workers, collate_fn=_collate,
                                             persistent_workers=False)
        log_path = a.save / LOG
        log_file = None
        if self.main:
            new = not (a.resume and log_path.is_file())
            log_file = open(log_path, "w" if new else "a", newline="")
            writer = csv.writer(log_file)
            if new:
                writer.writerow(LOG_FIELDS)
        bar = None
        if self.main and not a.quiet:
            from tqdm import tqdm

            bar = tqdm(total=a.iters, initial=self.iteration, desc=f"train {a.arch} x{a.scale}", unit="iter",
                       file=sys.stderr, dynamic_ncols=True, mininterval=1 if sys.stderr.isatty() else 30)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if a.amp == "bf16" else contextlib.nullcontext())
        clock = time.perf_counter()
        losses = []
        self.model.train()
        try:
            for lr, hr in loader:
                lr, hr = lr.to(self.device, non_blocking=True), hr.to(self.device, non_blocking=True)
                hashing = torch.Generator(self.device).manual_seed(_seed(a.seed, self.rank, self.iteration, 7))
                self.optimizer.zero_grad(set_to_none=True)
                with autocast:
                    sr = self.net(lr, generator=hashing)
                loss = F.l1_loss(sr.float(), hr)
                loss.backward()
                self.optimizer.step()
                self.schedule.step()
                self.iteration += 1
                losses.append(loss.detach())
                if bar is not None:
                    bar.update()
                done = self.iteration == a.iters
                if self.iteration % a.log_every == 0 or done or (self.val and self.iteration % a.val_every == 0):
                    mean = torch.stack(losses).mean()
                    if self.distributed:
                        torch.distributed.all_reduce(mean)
                        mean /= self.world
                    losses = []
                    val = ""
                    if self.val and (self.iteration % a.val_every == 0 or done):
                        if self.main:
                            val = f"{self.validate():.4f}"
                        if self.distributed:
                            torch.distributed.barrier()
                    seconds = self.started_seconds + time.perf_counter() - clock
                    if self.main:
                        writer.writerow([self.iteration, f"{float(mean):.6f}", f"{self.schedule.get_last_lr()[0]:.3g}",
                                         val, f"{seconds:.1f}"])
                        log_file.flush()
                        if bar is not None:
                            bar.set_postfix(loss=f"{float(mean):.4f}")
                if self.iteration % a.save_every == 0 or done:
                    self.checkpoint(self.started_seconds + time.perf_counter() - clock)
        finally:
            if bar is not None:
                bar.close()
            if log_file is not None:
                log_file.close()
        if self.main:
            _log(f"{a.iters} iterations; weights in {a.save / MODEL}, resumable state in {a.save / CHECKPOINT}, "
                 f"log in {a.save / LOG}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = Run(args)
    try:
        run.check_data()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if run.distributed:
        import torch.distributed as dist

        dist.init_process_group("nccl" if run.device.type == "cuda" else "gloo")
        if run.device.type == "cuda":
            torch.cuda.set_device(run.device)
    try:
        args.save.mkdir(parents=True, exist_ok=True)
        run.build()
        if args.resume:
            run.resume()
        if run.iteration >= args.iters:
            print(f"error: --iters {args.iters}: the checkpoint is already at iteration {run.iteration}",
                  file=sys.stderr)
            return 2
        if run.main:
            n = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
            _log(f"{args.arch} x{args.scale}: {n / 1e6:.3f} M parameters, {len(run.pairs)} training images, "
                 f"{run.world} process(es) on {run.device}, batch {args.batch_size}, patch {args.patch_size}, "
                 f"lr {args.lr:g} halved every {args.lr_step} iterations, seed {args.seed}")
        run.train()
        if run.distributed:  # no rank leaves (tearing gloo's connections down) while rank 0 still saves
            torch.distributed.barrier()
    finally:
        if run.distributed:
            torch.distributed.destroy_process_group()
    return 0
