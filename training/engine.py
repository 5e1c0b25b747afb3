"""The shared training engine: builds encoder, model, optimiser and data from an
:class:`~training.experiment.Experiment`, then trains with per-epoch checkpoints or evaluates.

``main`` is what the entry scripts call; ``run`` is the same without the command line and the
exit-status handling, for tests and notebooks.
"""
from __future__ import annotations

import inspect
import math
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

from .checkpoint import (capture_rng_state, checkpoint_paths, load_checkpoint, load_weights,
                         restore_rng_state, run_tag, save_checkpoint)
from .cli import parse_settings
from .data import DATASETS, build_datasets, make_loader
from .errors import UsageError
from .experiment import Experiment
from .loop import EpochStats, EvalMonitor, evaluate, train_one_epoch
from .metrics import MetricsLog
from .optim import adjust_learning_rate, build_optimizer, schedule_state
from .progress import EpochProgress, format_table
from .reports import make_spike_monitor, report_spike_stats, write_training_curves

__all__ = ["RunResult", "build_model", "epoch_seed", "main", "resolve_device", "run",
           "seed_everything"]


@dataclass
class RunResult:
    """What a run ends with: the best test top-1 (percent), the last test pass and every epoch's
    CSV row (including epochs of a resumed checkpoint)."""

    best_prec1: float
    test: EpochStats | None
    history: list[dict[str, Any]] = field(default_factory=list)


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


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s data order and augmentation, independent of all other draws."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


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
    return models.get_model(settings.arch, **kwargs)


def _has_dropout(arch: str) -> bool:
    return "dropout" in inspect.signature(models.MODELS[arch]).parameters


def _say(*parts: object) -> None:
    print(*parts, flush=True)


def _describe(settings: Experiment, device: torch.device, train_size: int | None,
              test_size: int) -> str:
    data = "synthetic " + settings.dataset if settings.synthetic else settings.dataset
    sizes = f"{test_size} test" if train_size is None else f"{train_size} train / {test_size} test"
    return (f"{run_tag(settings)}: {settings.arch} on {data} ({sizes}), T={settings.time_steps}, "
            f"leak {settings.leak}, lr {settings.lr}, momentum {settings.momentum}, "
            f"batch {settings.batch_size}/{settings.test_batch_size}, device {device}, "
            f"seed {settings.seed}")


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
               monitor: EvalMonitor | None = None) -> EpochStats:
    generator.manual_seed(settings.seed)
    progress = EpochProgress(len(loader), label, settings.print_freq)
    try:
        return evaluate(model, encoder, loader, device, monitor, progress)
    finally:
        progress.close()


def run(settings: Experiment) -> RunResult:
    """Train (or with ``settings.evaluate``, only test) as ``settings`` says.

    Training writes ``checkpointT1_<tag>.pth.tar`` after every epoch, ``model_bestT1_<tag>.pth.tar``
    whenever test top-1 improves, and ``metrics_<tag>.csv``, all in ``settings.out_dir``.

    Raises:
        UsageError: bad checkpoint, missing data, ``evaluate`` without ``resume``.
    """
    if settings.evaluate and not settings.resume:
        raise UsageError("--evaluate needs a checkpoint: pass --resume PATH "
                         "(refusing to evaluate untrained weights)")
    device = resolve_device(settings.device)
    seed_everything(settings.seed)
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
    test_loader = make_loader(test_set, settings.test_batch_size, settings.workers, device,
                              torch.Generator().manual_seed(settings.seed), shuffle=False)
    _say(_describe(settings, device, None if train_set is None else len(train_set), len(test_set)))

    if settings.evaluate:
        test = _test_pass(model, test_encoder, test_generator, test_loader, device, settings,
                          "Test", monitor)
        _say(f" * Prec@1 {test.top1:.3f} Prec@5 {test.top5:.3f}")
        _say(f"Test: loss {test.loss:.4f} CE {test.cross_entropy:.4f} top-1 {test.top1:.2f}% "
             f"top-5 {test.top5:.2f}% ({test.samples} images, T={settings.time_steps}, "
             f"{test.seconds:.1f} s)")
        if monitor is not None:
            report_spike_stats(monitor, settings, settings.resume, test.top1)
        return RunResult(test.top1, test)

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
        start_epoch = int(checkpoint.get("epoch", 0))
        if checkpoint.get("best_prec1") is not None:
            best_prec1 = float(checkpoint["best_prec1"])
        history = list(checkpoint.get("history", []))
        if "rng" in checkpoint:
            restore_rng_state(checkpoint["rng"])
    if settings.start_epoch is not None:
        start_epoch = settings.start_epoch
    if start_epoch >= settings.epochs:
        _say(f"nothing to train: starting epoch {start_epoch} is not below --epochs "
             f"{settings.epochs}")
        return RunResult(best_prec1 if best_prec1 is not None else 0.0, None, history)

    tag = run_tag(settings)
    os.makedirs(settings.out_dir, exist_ok=True)
    log = MetricsLog(os.path.join(settings.out_dir, f"metrics_{tag}.csv"), start_epoch)
    data_generator = torch.Generator()
    train_loader = make_loader(train_set, settings.batch_size, settings.workers, device,
                               data_generator, shuffle=True)
    test = None
    for epoch in range(start_epoch, settings.epochs):
        lr = adjust_learning_rate(optimizer, epoch, settings)
        data_generator.manual_seed(epoch_seed(settings.seed, epoch))
        progress = EpochProgress(len(train_loader), f"Epoch {epoch + 1}/{settings.epochs}",
                                 settings.print_freq)
        try:
            train = train_one_epoch(model, encoder, train_loader, optimizer, device, progress)
        finally:
            progress.close()
        if not math.isfinite(train.loss):
            raise UsageError(f"training diverged in epoch {epoch + 1} (loss {train.loss}); "
                             "lower --lr")
        test = _test_pass(model, test_encoder, test_generator, test_loader, device, settings,
                          "Test", monitor if epoch == settings.epochs - 1 else None)
        is_best = best_prec1 is None or test.top1 > best_prec1
        best_prec1 = test.top1 if is_best else best_prec1
        row = _row(epoch, lr, train, test)
        history.append(row)
        log.append(row)
        save_checkpoint({
            "epoch": epoch + 1,
            "arch": settings.arch,
            "state_dict": model.state_dict(),
            "best_prec1": best_prec1,
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule_state(settings, epoch + 1),
            "rng": capture_rng_state(),
            "settings": settings.to_dict(),
            "history": history,
        }, is_best, settings.out_dir, tag)
        _say(f" * Prec@1 {test.top1:.3f} Prec@5 {test.top5:.3f}")
        _say(_summary(row, settings.epochs, best_prec1))

    _say(_final_table(history))
    last, best = checkpoint_paths(settings.out_dir, tag)
    _say(f"best test top-1 {best_prec1:.2f}%; checkpoints {last} and {best}")
    write_training_curves(log.path, settings)
    if monitor is not None:
        report_spike_stats(monitor, settings, last, test.top1)
    return RunResult(best_prec1, test, history)


def main(defaults: Experiment, argv: Sequence[str] | None = None,
         description: str | None = None) -> None:
    """Entry point of the scripts: parse ``argv`` over ``defaults``, run, exit.

    A :class:`UsageError` becomes ``error: <message>`` on stderr and exit status 2.
    """
    settings = parse_settings(defaults, argv, description)
    try:
        run(settings)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
