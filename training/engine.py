"""The shared training engine: builds encoder, model, optimiser and data from an
:class:`~training.experiment.Experiment`, then trains with per-epoch checkpoints or evaluates.

``main`` is what the entry scripts call; ``run`` is the same without the command line and the
exit-status handling, for tests and notebooks.
"""
from __future__ import annotations

import inspect
import os
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import models
from spiking import PoissonEncoder

from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from .amp import Precision, make_precision
from .checkpoint import (capture_rng_state, checkpoint_paths, load_checkpoint, load_weights,
                         run_tag, save_checkpoint)
from .cli import parse_settings
from .data import DATASETS, build_datasets, make_loader
from .distributed import (DistContext, ShardSampler, barrier, cleanup, init_distributed,
                          is_main_process, per_rank_batch, process_device)
from .errors import UsageError
from .experiment import Experiment
from .loop import EpochStats, EvalMonitor, NonFiniteLoss, evaluate, train_one_epoch
from .metrics import MetricsLog
from .optim import adjust_learning_rate, build_optimizer, schedule_state
from .progress import EpochProgress, format_table
from .reports import make_spike_monitor, report_spike_stats, write_training_curves

__all__ = ["RunResult", "build_model", "check_input_shape", "epoch_seed", "main",
           "resolve_device", "run", "seed_everything", "set_deterministic"]


@dataclass
class RunResult:
    """What a run ends with: the best test top-1 (percent), the last test pass, every epoch's
    CSV row (including epochs of a resumed checkpoint) and this process's network (unwrapped
    from DDP), e.g. to compare the ranks' weights."""

    best_prec1: float
    test: EpochStats | None
    history: list[dict[str, Any]] = field(default_factory=list)
    model: torch.nn.Module | None = None


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` if available, else ``cpu``; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of epoch ``epoch``'s draws on process ``rank``, independent of all other epochs'.

    The engine seeds the loader's generator (augmentation) and, separately, the global
    generators (spikes, dropout masks) from it at the start of every epoch, so what an epoch
    draws depends only on (seed, epoch, rank): a run resumed at an epoch boundary draws exactly
    what the uninterrupted run drew, and DDP ranks draw independently.
    """
    entropy = [seed, epoch] if rank == 0 else [seed, epoch, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def set_deterministic() -> None:
    """``--deterministic``: deterministic cuDNN/cuBLAS kernels and no autotuning.

    CUBLAS_WORKSPACE_CONFIG must be set before the first cuBLAS call, hence here, early.
    Operations without a deterministic kernel warn instead of failing the run.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def check_input_shape(dataset: Dataset, expected: Sequence[int], arch: str, what: str) -> None:
    """Compare one image of ``dataset`` with the network's ``(C, H, W)`` before any training.

    Raises:
        UsageError: another shape or channel count (one line: expected vs got).
    """
    got = tuple(dataset[0][0].shape)
    if got != tuple(expected):
        raise UsageError(f"{what} images have shape {got} (C, H, W), but {arch} expects "
                         f"{tuple(expected)}; check --data and the script/dataset")


def build_model(settings: Experiment) -> models.SpikingNetwork:
    """``settings.arch`` for ``settings.dataset``'s image shape and classes, with
    ``settings.dropout`` where the network has dropout."""
    info = DATASETS[settings.dataset]
    kwargs: dict[str, Any] = dict(num_classes=info.num_classes, leak=settings.leak,
                                  threshold=settings.threshold,
                                  pool_threshold=settings.pool_threshold, width=settings.width,
                                  input_shape=info.input_shape)
    if _has_dropout(settings.arch):
        kwargs["dropout"] = settings.dropout
    model = models.get_model(settings.arch, **kwargs)
    model.time_chunk = settings.time_chunk or None
    return model


def _has_dropout(arch: str) -> bool:
    return "dropout" in inspect.signature(models.MODELS[arch]).parameters


def _say(*parts: object) -> None:
    """Print on rank 0 only (every process of a DDP run would repeat the same line)."""
    if is_main_process():
        print(*parts, flush=True)


def _describe(settings: Experiment, device: torch.device, train_size: int | None,
              test_size: int) -> str:
    data = "synthetic " + settings.dataset if settings.synthetic else settings.dataset
    sizes = f"{test_size} test" if train_size is None else f"{train_size} train / {test_size} test"
    return (f"{run_tag(settings)}: {settings.arch} on {data} ({sizes}), T={settings.time_steps}, "
            f"leak {settings.leak}, lr {settings.lr}, momentum {settings.momentum}, "
            f"batch {settings.batch_size}/{settings.test_batch_size}, device {device}, "
            f"seed {settings.seed}")


def _describe_parallel(context: DistContext, precision: Precision) -> str:
    ranks = (f"DDP over {context.world_size} processes "
             f"({torch.distributed.get_backend()}), global batch split evenly; "
             if context.enabled else "")
    return f"{ranks}{precision.describe()}"


def _row(epoch: int, lr: float, train: EpochStats, test: EpochStats) -> dict[str, Any]:
    return {"epoch": epoch + 1, "lr": lr, "train_loss": train.loss, "train_ce": train.cross_entropy,
            "train_top1": train.top1, "train_top5": train.top5, "test_loss": test.loss,
            "test_ce": test.cross_entropy, "test_top1": test.top1, "test_top5": test.top5,
            "train_samples_per_s": train.samples_per_s,
            "epoch_seconds": train.seconds + test.seconds}


def _summary(row: dict[str, Any], epochs: int, best: float) -> str:
    return (f"Epoch {row['epoch']}/{epochs} | lr {row['lr']:.3g} | "
            f"train loss {row['train_loss']:.4f} CE {row['train_ce']:.4f} "
            f"top-1 {row['train_top1']:.2f}% | "
            f"test loss {row['test_loss']:.4f} CE {row['test_ce']:.4f} "
            f"top-1 {row['test_top1']:.2f}% top-5 {row['test_top5']:.2f}% | "
            f"{row['train_samples_per_s']:.1f} samples/s | {row['epoch_seconds']:.1f} s | "
            f"best {best:.2f}%")


def _final_table(history: list[dict[str, Any]]) -> str:
    headers = ("epoch", "lr", "train loss", "train top-1", "test loss", "test top-1",
               "test top-5", "seconds")
    rows = [(r["epoch"], f"{float(r['lr']):.6g}", float(r["train_loss"]), float(r["train_top1"]),
             float(r["test_loss"]), float(r["test_top1"]), float(r["test_top5"]),
             f"{float(r['epoch_seconds']):.1f}") for r in history]
    return format_table(headers, rows)


def _test_pass(model, encoder, generator, loader, device, settings, label,
               monitor: EvalMonitor | None = None,
               precision: Precision | None = None) -> EpochStats:
    generator.manual_seed(settings.seed)
    progress = EpochProgress(len(loader), label, settings.print_freq) if is_main_process() else None
    try:
        return evaluate(model, encoder, loader, device, monitor, progress, precision)
    finally:
        if progress is not None:
            progress.close()


def _train_pass(model, encoder, loader, optimizer, device, settings, epoch: int,
                context: DistContext, precision: Precision, last_checkpoint: str) -> EpochStats:
    """One epoch; a NaN/infinite loss becomes a one-line error naming the step and the
    checkpoint that is kept (nothing is saved for the diverged epoch)."""
    progress = (EpochProgress(len(loader), f"Epoch {epoch + 1}/{settings.epochs}",
                              settings.print_freq) if is_main_process() else None)
    try:
        return train_one_epoch(model, encoder, loader, optimizer, device, progress,
                               context.world_size, precision)
    except NonFiniteLoss as error:
        kept = (f"last good checkpoint kept: {last_checkpoint}" if os.path.exists(last_checkpoint)
                else "no checkpoint was written")
        raise UsageError(f"loss became {error.value} at epoch {epoch + 1}, step {error.step}; "
                         f"{kept} (lower --lr?)") from None
    finally:
        if progress is not None:
            progress.close()


def _save(state: dict[str, Any], is_best: bool, settings: Experiment, tag: str) -> None:
    """Rank 0 writes; a full disk or read-only directory becomes a one-line error, and the
    previous checkpoint stays intact (atomic_save replaces files only when complete)."""
    if not is_main_process():
        return
    try:
        save_checkpoint(state, is_best, settings.out_dir, tag)
    except OSError as error:
        raise UsageError(f"cannot write checkpoint to {settings.out_dir}: "
                         f"{error.strerror or error}; the previous checkpoint is kept") from None


def _open_log(settings: Experiment, tag: str, start_epoch: int) -> MetricsLog | None:
    if not is_main_process():
        return None
    try:
        os.makedirs(settings.out_dir, exist_ok=True)
        return MetricsLog(os.path.join(settings.out_dir, f"metrics_{tag}.csv"), start_epoch)
    except OSError as error:
        raise UsageError(f"cannot write to --out-dir {settings.out_dir}: "
                         f"{error.strerror or error}") from None


def run(settings: Experiment) -> RunResult:
    """Train (or with ``settings.evaluate``, only test) as ``settings`` says.

    Training writes ``checkpointT1_<tag>.pth.tar`` after every epoch, ``model_bestT1_<tag>.pth.tar``
    whenever test top-1 improves, and ``metrics_<tag>.csv``, all in ``settings.out_dir``.

    Under ``torchrun`` (DDP) every process trains on its shard of each global batch of
    ``settings.batch_size`` images; only rank 0 prints and writes files, and the metrics are
    averages over all ranks. The caller leaves the process group (``main`` does).

    Raises:
        UsageError: bad checkpoint, missing data, images of the wrong shape, a diverged loss,
            an unwritable ``out_dir``, ``evaluate`` without ``resume``.
    """
    if settings.evaluate and not settings.resume:
        raise UsageError("--evaluate needs a checkpoint: pass --resume PATH "
                         "(refusing to evaluate untrained weights)")
    if settings.deterministic:
        set_deterministic()
    context = init_distributed(resolve_device(settings.device))
    device = process_device(resolve_device(settings.device), context)
    precision = make_precision(settings.amp, device)
    batch_size = per_rank_batch(settings.batch_size, context, "-b/--batch-size")
    seed_everything(settings.seed)  # same initial weights on every rank
    model = build_model(settings).to(device)
    if settings.dropout > 0 and not _has_dropout(settings.arch):
        _say(f"note: {settings.arch} has no dropout; ignoring dropout {settings.dropout}")
    # --stats counts during one test pass: the evaluation's, or the last epoch's
    monitor = make_spike_monitor(model, settings) if settings.stats else None
    # Training draws spikes (and dropout masks) from the global generator; every test pass
    # re-seeds its own, so test accuracy depends only on the weights, data and device.
    encoder = PoissonEncoder(settings.time_steps, settings.input_scale)
    test_generator = torch.Generator(device=device)
    test_encoder = PoissonEncoder(settings.time_steps, settings.input_scale, test_generator)
    optimizer = build_optimizer(model, settings)

    checkpoint: dict[str, Any] = {}
    if settings.resume:
        checkpoint = load_checkpoint(settings.resume)
        load_weights(model, checkpoint, settings.arch, settings.resume)
        _say(f"=> loaded checkpoint '{settings.resume}' (epoch {checkpoint.get('epoch', '?')})")
        trained_t = checkpoint.get("settings", {}).get("time_steps")
        if trained_t is not None and trained_t != settings.time_steps:
            _say(f"note: checkpoint was trained with T={trained_t}; this run uses "
                 f"T={settings.time_steps}")

    train_set, test_set = build_datasets(settings, train=not settings.evaluate)
    for what, dataset in (("test", test_set), ("training", train_set)):
        if dataset is not None:
            check_input_shape(dataset, model.input_shape, settings.arch, what)
    test_loader = make_loader(test_set, -(-settings.test_batch_size // context.world_size),
                              settings.workers, device,
                              torch.Generator().manual_seed(settings.seed), shuffle=False,
                              sampler=ShardSampler(len(test_set), context))
    _say(_describe(settings, device, None if train_set is None else len(train_set), len(test_set)))
    _say(_describe_parallel(context, precision))

    if settings.evaluate:
        test = _test_pass(model, test_encoder, test_generator, test_loader, device, settings,
                          "Test", monitor, precision)
        _say(f" * Prec@1 {test.top1:.3f} Prec@5 {test.top5:.3f}")
        _say(f"Test: loss {test.loss:.4f} CE {test.cross_entropy:.4f} top-1 {test.top1:.2f}% "
             f"top-5 {test.top5:.2f}% ({test.samples} images, T={settings.time_steps}, "
             f"{test.seconds:.1f} s)")
        if monitor is not None and is_main_process():
            report_spike_stats(monitor, settings, settings.resume, test.top1)
        return RunResult(test.top1, test, model=model)

    start_epoch, best_prec1, history = 0, None, []
    if checkpoint:
        if "optimizer" in checkpoint:
            try:
                optimizer.load_state_dict(checkpoint["optimizer"])
            except (ValueError, KeyError, TypeError) as error:
                raise UsageError(f"checkpoint {settings.resume}: optimizer state does not fit: "
                                 f"{error}") from None
            # The command line, not the checkpoint, decides the hyperparameters of the rest.
            for group in optimizer.param_groups:
                group.update(momentum=settings.momentum, weight_decay=settings.weight_decay)
        if precision.scaler is not None and "scaler" in checkpoint:
            precision.scaler.load_state_dict(checkpoint["scaler"])
        start_epoch = int(checkpoint.get("epoch", 0))
        if checkpoint.get("best_prec1") is not None:
            best_prec1 = float(checkpoint["best_prec1"])
        history = list(checkpoint.get("history", []))
    if settings.start_epoch is not None:
        start_epoch = settings.start_epoch
    if start_epoch >= settings.epochs:
        _say(f"nothing to train: starting epoch {start_epoch} is not below --epochs "
             f"{settings.epochs}")
        return RunResult(best_prec1 if best_prec1 is not None else 0.0, None, history, model)

    tag = run_tag(settings)
    last, best = checkpoint_paths(settings.out_dir, tag)
    log = _open_log(settings, tag, start_epoch)
    data_generator = torch.Generator()
    # Every rank permutes the same way (seed + epoch) and takes every world_size-th index, so
    # the ranks' batches k together are the single-process global batch k.
    sampler = DistributedSampler(train_set, context.world_size, context.rank, shuffle=True,
                                 seed=settings.seed)
    train_loader = make_loader(train_set, batch_size, settings.workers, device, data_generator,
                               shuffle=False, sampler=sampler)
    train_model = model
    if context.enabled:
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    test = None
    for epoch in range(start_epoch, settings.epochs):
        lr = adjust_learning_rate(optimizer, epoch, settings)
        sampler.set_epoch(epoch)
        data_generator.manual_seed(epoch_seed(settings.seed, epoch, context.rank))
        # spikes and dropout masks: a stream of their own, not a copy of the loader's
        seed_everything(epoch_seed(settings.seed, epoch, context.rank) ^ 0x5EED)
        train = _train_pass(train_model, encoder, train_loader, optimizer, device, settings, epoch,
                            context, precision, last)
        test = _test_pass(model, test_encoder, test_generator, test_loader, device, settings,
                          "Test", monitor if epoch == settings.epochs - 1 else None, precision)
        is_best = best_prec1 is None or test.top1 > best_prec1
        best_prec1 = test.top1 if is_best else best_prec1
        row = _row(epoch, lr, train, test)
        history.append(row)
        state = {
            "epoch": epoch + 1,
            "arch": settings.arch,
            "state_dict": model.state_dict(),  # the bare network: the authors' key names
            "best_prec1": best_prec1,
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule_state(settings, epoch + 1),
            "rng": capture_rng_state(),
            "settings": settings.to_dict(),
            "history": history,
        }
        if precision.scaler is not None:
            state["scaler"] = precision.scaler.state_dict()
        _save(state, is_best, settings, tag)
        if log is not None:
            log.append(row)
        _say(f" * Prec@1 {test.top1:.3f} Prec@5 {test.top5:.3f}")
        _say(_summary(row, settings.epochs, best_prec1))

    barrier()  # the other ranks may read rank 0's checkpoint next (e.g. --evaluate)
    _say(_final_table(history))
    _say(f"best test top-1 {best_prec1:.2f}%; checkpoints {last} and {best}")
    if is_main_process():
        write_training_curves(log.path, settings)
        if monitor is not None:
            report_spike_stats(monitor, settings, last, test.top1)
    return RunResult(best_prec1, test, history, model)


def main(defaults: Experiment, argv: Sequence[str] | None = None,
         description: str | None = None) -> None:
    """Entry point of the scripts: parse ``argv`` over ``defaults``, run, exit.

    A :class:`UsageError` becomes ``error: <message>`` on stderr (rank 0 only under DDP) and
    exit status 2. The DDP process group, if any, is left in every case.
    """
    settings = parse_settings(defaults, argv, description)
    try:
        run(settings)
    except UsageError as error:
        if is_main_process():
            print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        cleanup()
