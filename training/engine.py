"""The training engine: :func:`run` reads as set up -> resume -> for each epoch: train, evaluate,
save; :func:`main` is what the entry scripts call (the command line and exit statuses).

Each step of ``run`` is a function of its own below, sharing one :class:`_Run` that holds what
the run built (model, optimiser, loaders, ...), in the manner of pytorch/examples' imagenet
script.
"""
from __future__ import annotations

import os
import random
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

import models
from spiking import PoissonEncoder, backend

from .checkpoint import (capture_rng_state, checkpoint_paths, load_checkpoint, load_weights,
                         restore_rng_state, run_tag, save_checkpoint)
from .data import DATASETS, build_datasets, make_loader
from .distributed import (DistContext, ResumableSampler, ShardSampler, all_gather,
                          all_reduce_max, all_reduce_sum, barrier, cleanup, init_distributed,
                          is_main_process, per_rank_batch, process_device)
from .experiment import Experiment, UsageError, parse_settings
from .loop import (EpochMeters, EpochStats, NonFiniteLoss, Precision, adjust_learning_rate,
                   build_optimizer, evaluate, make_precision, schedule_state, train_one_epoch)
from .metrics import EpochProgress, EpochRecord, MetricsLog, format_epoch_table
from .reports import make_spike_monitor, report_spike_stats, write_training_curves
from .stops import AfterStep, Interrupted, Interrupts, SpikeCounts

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
    what the uninterrupted run drew, and DDP ranks draw independently. Inside an epoch, a
    checkpoint's generator states take over.
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
    """``settings.arch`` for ``settings.dataset``'s image shape and classes."""
    info = DATASETS[settings.dataset]
    model = models.get_model(settings.arch, num_classes=info.num_classes, leak=settings.leak,
                             threshold=settings.threshold, pool_threshold=settings.pool_threshold,
                             dropout=settings.dropout, width=settings.width,
                             input_shape=info.input_shape)
    model.time_chunk = settings.time_chunk or None
    return model


def _say(*parts: object) -> None:
    """Print on rank 0 only (every process of a DDP run would repeat the same line)."""
    if is_main_process():
        print(*parts, flush=True)


@dataclass
class _Run:
    """What :func:`run` builds once and its steps share."""

    settings: Experiment
    context: DistContext
    device: torch.device
    precision: Precision
    model: models.SpikingNetwork
    optimizer: torch.optim.Optimizer
    command: Sequence[str]
    tag: str = ""
    last: str = ""
    best: str = ""
    checkpoint: dict[str, Any] = field(default_factory=dict)
    test_loader: DataLoader | None = None
    train_loader: DataLoader | None = None
    sampler: ResumableSampler | None = None
    data_generator: torch.Generator = field(default_factory=torch.Generator)
    monitor: Any = None
    start_epoch: int = 0
    start_step: int = 0
    best_prec1: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    fired: set[str] = field(default_factory=set)
    log: MetricsLog | None = None


def run(settings: Experiment, after_step: AfterStep | None = None,
        command: Sequence[str] | None = None) -> RunResult:
    """Train (or with ``settings.evaluate``, only test) as ``settings`` says.

    Training writes ``checkpointT1_<tag>.pth.tar`` after every epoch (and inside one at SIGINT,
    SIGTERM or every ``--save-every`` minutes), ``model_bestT1_<tag>.pth.tar`` whenever test
    top-1 improves, and ``metrics_<tag>.csv``, all in ``settings.out_dir``.

    Under ``torchrun`` (DDP) every process trains on its shard of each global batch of
    ``settings.batch_size`` images; only rank 0 prints and writes files, and the metrics are
    averages over all ranks. The caller leaves the process group (``main`` does).

    Args:
        settings: the experiment.
        after_step: called as ``after_step(epoch, step)`` (0-based epoch, 1-based step) after
            every training step, e.g. to log or, in tests, to send a signal.
        command: the command line that started the run (script and arguments; default
            ``sys.argv``), for the resume hint printed at an interrupt.

    Raises:
        UsageError: bad checkpoint, missing data, images of the wrong shape, outputs of a
            previous run without ``--resume``/``--overwrite``, a diverged loss, a layer gone
            silent, an unwritable ``out_dir``, ``evaluate`` without ``resume``.
        Interrupted: SIGINT/SIGTERM, after the mid-epoch checkpoint was written.
    """
    r = _set_up(settings, command or sys.argv)
    if settings.resume:
        _load_resume_weights(r)
    train_set = _load_data(r)
    if settings.evaluate:
        return _evaluate_only(r)
    _resume_training_state(r)
    if r.start_epoch >= settings.epochs:
        _say(f"nothing to train: starting epoch {r.start_epoch} is not below --epochs "
             f"{settings.epochs}")
        return RunResult(r.best_prec1 or 0.0, None, r.history, r.model)
    _prepare_training(r, train_set)
    train_model = r.model
    if r.context.enabled:
        train_model = DistributedDataParallel(
            r.model, device_ids=[r.device.index] if r.device.type == "cuda" else None)
    test_encoder, test_generator = _test_encoder(r)
    spikes = SpikeCounts(r.model, r.device)
    test = None
    with Interrupts(settings.save_every, after_step) as interrupts:
        for epoch in range(r.start_epoch, settings.epochs):
            lr, train = _train_epoch(r, train_model, epoch, interrupts, spikes)
            _check_silence(r, spikes.total(), epoch)
            test = _test_pass(r, test_encoder, test_generator,
                              r.monitor if epoch == settings.epochs - 1 else None)
            _end_epoch(r, epoch, lr, train, test)
            _stop_if_signalled(r, interrupts, epoch)
    barrier()  # the other ranks may read rank 0's checkpoint next (e.g. --evaluate)
    _finish(r, test)
    return RunResult(r.best_prec1, test, r.history, r.model)


def _set_up(settings: Experiment, command: Sequence[str]) -> _Run:
    """Process group, device, precision, model (same initial weights on every rank), SGD."""
    if settings.evaluate and not settings.resume:
        raise UsageError("--evaluate needs a checkpoint: pass --resume PATH "
                         "(refusing to evaluate untrained weights)")
    if settings.deterministic:
        set_deterministic()
    context = init_distributed(resolve_device(settings.device))
    device = process_device(resolve_device(settings.device), context)
    seed_everything(settings.seed)
    model = build_model(settings).to(device)
    tag = run_tag(settings)
    r = _Run(settings, context, device, make_precision(settings.amp, device), model,
             build_optimizer(model, settings), command, tag,
             *checkpoint_paths(settings.out_dir, tag))
    # --stats counts during one test pass: the evaluation's, or the last epoch's
    r.monitor = make_spike_monitor(model, settings) if settings.stats else None
    return r


def _load_resume_weights(r: _Run) -> None:
    settings = r.settings
    r.checkpoint = load_checkpoint(settings.resume)
    load_weights(r.model, r.checkpoint, settings.arch, settings.resume, settings.dataset)
    _say(f"=> loaded checkpoint '{settings.resume}' (epoch {r.checkpoint.get('epoch', '?')})")
    trained_t = r.checkpoint.get("settings", {}).get("time_steps")
    if trained_t is not None and trained_t != settings.time_steps:
        _say(f"note: checkpoint was trained with T={trained_t}; this run uses "
             f"T={settings.time_steps}")


def _load_data(r: _Run) -> Dataset | None:
    """Both data sets (the test set alone for ``--evaluate``), checked against the network;
    the test loader; the header lines. Returns the training set."""
    settings, context = r.settings, r.context
    train_set, test_set = _datasets(settings, train=not settings.evaluate)
    for what, dataset in (("test", test_set), ("training", train_set)):
        if dataset is not None:
            check_input_shape(dataset, r.model.input_shape, settings.arch, what)
    if train_set is not None and settings.train_subset > len(train_set):
        raise UsageError(f"--train-subset {settings.train_subset} is larger than the training "
                         f"set ({len(train_set)} images)")
    r.test_loader = make_loader(test_set, -(-settings.test_batch_size // context.world_size),
                                settings.workers, r.device,
                                torch.Generator().manual_seed(settings.seed), shuffle=False,
                                sampler=ShardSampler(len(test_set), context))
    _say(_header(r, None if train_set is None else len(train_set), len(test_set)))
    return train_set


def _datasets(settings: Experiment, train: bool) -> tuple[Dataset | None, Dataset]:
    """:func:`build_datasets`; a failure leaves no empty ``--data`` directory behind."""
    existed = os.path.exists(settings.data_dir)
    try:
        return build_datasets(settings, train=train)
    except UsageError:
        if not existed and os.path.isdir(settings.data_dir):
            for folder, _, files in sorted(os.walk(settings.data_dir), reverse=True):
                if not files and not os.listdir(folder):
                    os.rmdir(folder)
        raise


def _header(r: _Run, train_size: int | None, test_size: int) -> str:
    """The run's first line: what is trained on what, with which settings, and what runs it."""
    settings = r.settings
    data = "synthetic " + settings.dataset if settings.synthetic else settings.dataset
    sizes = f"{test_size} test" if train_size is None else f"{train_size} train / {test_size} test"
    # what runs the network: device, precision, the spiking backend, processes
    runtime = [f"device {r.device}", r.precision.describe(), backend.describe(r.device)]
    if r.context.enabled:
        runtime.append(f"DDP over {r.context.world_size} processes "
                       f"({torch.distributed.get_backend()}), global batch split evenly")
    return (f"{r.tag}: {settings.arch} on {data} ({sizes}), T={settings.time_steps}, "
            f"leak {settings.leak}, lr {settings.lr}, momentum {settings.momentum}, "
            f"batch {settings.batch_size}/{settings.test_batch_size}, seed {settings.seed}, "
            + ", ".join(runtime))


def _test_encoder(r: _Run) -> tuple[PoissonEncoder, torch.Generator]:
    """Every test pass re-seeds its own generator, so test accuracy depends only on the weights,
    data and device (training draws from the global generator)."""
    generator = torch.Generator(device=r.device)
    return PoissonEncoder(r.settings.time_steps, r.settings.input_scale, generator), generator


def _test_pass(r: _Run, encoder: PoissonEncoder, generator: torch.Generator,
               monitor: Any = None) -> EpochStats:
    generator.manual_seed(r.settings.seed)
    progress = (EpochProgress(len(r.test_loader), "Test", r.settings.print_freq)
                if is_main_process() else None)
    try:
        return evaluate(r.model, encoder, r.test_loader, r.device, monitor, progress, r.precision)
    finally:
        if progress is not None:
            progress.close()


def _evaluate_only(r: _Run) -> RunResult:
    settings = r.settings
    test = _test_pass(r, *_test_encoder(r), r.monitor)
    _say(f" * Prec@1 {test.top1:.3f} Prec@5 {test.top5:.3f}")
    _say(f"Test: loss {test.loss:.4f} CE {test.cross_entropy:.4f} ({test.samples} images, "
         f"T={settings.time_steps}, {test.seconds:.1f} s)")
    if r.monitor is not None and is_main_process():
        report_spike_stats(r.monitor, settings, settings.resume, test.top1)
    return RunResult(test.top1, test, model=r.model)


def _resume_training_state(r: _Run) -> None:
    """Epoch, step, best top-1, history and optimiser state of the resumed checkpoint."""
    settings, checkpoint = r.settings, r.checkpoint
    if checkpoint:
        if "optimizer" in checkpoint:
            try:
                r.optimizer.load_state_dict(checkpoint["optimizer"])
            except (ValueError, KeyError, TypeError) as error:
                raise UsageError(f"checkpoint {settings.resume}: optimizer state does not fit: "
                                 f"{error}") from None
            # The command line, not the checkpoint, decides the hyperparameters of the rest.
            for group in r.optimizer.param_groups:
                group.update(momentum=settings.momentum, weight_decay=settings.weight_decay)
        if r.precision.scaler is not None and "scaler" in checkpoint:
            r.precision.scaler.load_state_dict(checkpoint["scaler"])
        r.start_epoch = int(checkpoint.get("epoch", 0))
        r.start_step = int(checkpoint.get("step", 0))
        if checkpoint.get("best_prec1") is not None:
            r.best_prec1 = float(checkpoint["best_prec1"])
        r.history = list(checkpoint.get("history", []))
        r.fired = set(checkpoint.get("fired", []))
        _note_schedule_change(r)
    if settings.start_epoch is not None:
        r.start_epoch, r.start_step = settings.start_epoch, 0
    ranks = checkpoint.get("ranks", [])
    if r.start_step and len(ranks) != r.context.world_size:
        raise UsageError(f"checkpoint {settings.resume} was written inside an epoch by "
                         f"{len(ranks)} process(es); resume it with as many (this run has "
                         f"{r.context.world_size})")


def _note_schedule_change(r: _Run) -> None:
    saved = r.checkpoint.get("scheduler")
    ours = schedule_state(r.settings, r.start_epoch)
    keys = ("base_lr", "milestones", "gamma")
    if saved and any(saved.get(k) != ours[k] for k in keys):
        theirs = ", ".join(f"{k} {saved.get(k)}" for k in keys)
        _say(f"note: the checkpoint's learning-rate schedule ({theirs}) differs from this "
             f"run's; this run's applies")


def _prepare_training(r: _Run, train_set: Dataset) -> None:
    """Refuse to overwrite another run's outputs; the CSV; the training loader."""
    settings = r.settings
    problem = _open_log(r) if is_main_process() else ""
    if all_reduce_max([float(bool(problem))], r.device)[0]:  # every rank stops, rank 0 says why
        raise UsageError(problem)
    # Every rank permutes the same way (seed + epoch) and takes every world_size-th index, so
    # the ranks' batches k together are the single-process global batch k.
    r.sampler = ResumableSampler(train_set, r.context.world_size, r.context.rank, shuffle=True,
                                 seed=settings.seed)
    batch_size = per_rank_batch(settings.batch_size, r.context, "-b/--batch-size")
    r.train_loader = make_loader(train_set, batch_size, settings.workers, r.device,
                                 r.data_generator, shuffle=False, sampler=r.sampler)


def _open_log(r: _Run) -> str:
    """Rank 0: refuse to overwrite a previous run's outputs, then start the CSV; returns what
    went wrong, or an empty string."""
    settings = r.settings
    csv_path = os.path.join(settings.out_dir, f"metrics_{r.tag}.csv")
    found = [p for p in (r.last, r.best, csv_path) if os.path.exists(p)]
    if found and not settings.resume and not settings.overwrite:
        return (f"{settings.out_dir} holds a previous run's "
                f"{', '.join(map(os.path.basename, found))}; continue it with --resume "
                f"{r.last}, or start over with --overwrite")
    try:
        os.makedirs(settings.out_dir, exist_ok=True)
        r.log = MetricsLog(csv_path, r.start_epoch)
    except OSError as error:
        return f"cannot write to --out-dir {settings.out_dir}: {error.strerror or error}"
    return ""


def _train_epoch(r: _Run, train_model: nn.Module, epoch: int, interrupts: Interrupts,
                 spikes: SpikeCounts) -> tuple[float, EpochStats]:
    """One epoch's draws fixed by (seed, epoch, rank), or a resumed epoch's continued from the
    checkpoint; then the training pass. A NaN/infinite loss becomes a one-line error naming
    the step and the checkpoint that is kept (nothing is saved for the diverged epoch)."""
    settings, rank = r.settings, r.context.rank
    lr = adjust_learning_rate(r.optimizer, epoch, settings)
    r.sampler.set_epoch(epoch)
    r.data_generator.manual_seed(epoch_seed(settings.seed, epoch, rank))
    # spikes and dropout masks: a stream of their own, not a copy of the loader's
    seed_everything(epoch_seed(settings.seed, epoch, rank) ^ 0x5EED)
    done, meters = 0, EpochMeters()
    spikes.reset()
    if epoch == r.start_epoch and r.start_step:
        done, resumed = r.start_step, r.checkpoint["ranks"][rank]
        restore_rng_state(resumed["rng"])
        meters = EpochMeters(resumed["meters"])
        spikes.reset(resumed["spikes"])
    r.sampler.skip = done * r.train_loader.batch_size
    interrupts.epoch = epoch
    interrupts.on_save = lambda step, m: _save_inside_epoch(r, epoch, step, m, spikes)
    progress = (EpochProgress(done + len(r.train_loader), f"Epoch {epoch + 1}/{settings.epochs}",
                              settings.print_freq, done=done) if is_main_process() else None)
    try:
        with spikes:
            return lr, train_one_epoch(train_model, PoissonEncoder(settings.time_steps,
                                                                   settings.input_scale),
                                       r.train_loader, r.optimizer, r.device, progress,
                                       r.context.world_size, r.precision, meters, interrupts,
                                       done + 1)
    except NonFiniteLoss as error:
        raise UsageError(f"loss became {error.value} at epoch {epoch + 1}, step {error.step}; "
                         f"{_kept(r)} (lower --lr?)") from None
    except Interrupted as interrupt:
        if progress is not None:  # the bar first, so that the line stands alone
            progress.close()
            progress = None
        _say(f"interrupted at epoch {epoch + 1}, step {interrupt.step}; resume with: "
             f"{_resume_command(r)}")
        raise
    finally:
        if progress is not None:
            progress.close()


def _kept(r: _Run) -> str:
    return (f"last good checkpoint kept: {r.last}" if os.path.exists(r.last)
            else "no checkpoint was written")


def _check_silence(r: _Run, counts: dict[str, int], epoch: int) -> None:
    """A layer that fired in an earlier epoch and emitted nothing in this one has gone silent:
    no gradient passes it any more, so the run stops (``--allow-silent``: warns) before this
    epoch is saved. Layers silent from the start get a warning in the run's first epoch."""
    silent = [name for name, count in counts.items() if count == 0]
    gone = [name for name in silent if name in r.fired]
    r.fired |= {name for name, count in counts.items() if count}
    if gone:
        nothing = "no spike" + (" (the output: only zeros)" if "output" in gone else "")
        message = (f"{', '.join(gone)} went silent in epoch {epoch + 1}: {nothing} over the "
                   f"whole training epoch")
        if not r.settings.allow_silent:
            # the weights that started this epoch were silent already: the best ones matter
            kept = (f"the best checkpoint, {r.best} (test top-1 {r.best_prec1:.2f}%), and the "
                    f"last, {r.last}, are kept" if r.best_prec1 is not None else _kept(r))
            raise UsageError(f"{message}; stopped, {kept} (lower --lr?, or --allow-silent to "
                             f"go on)")
        _say(f"warning: {message}")
    elif silent and epoch == 0:
        _say(f"warning: {', '.join(silent)} emitted no spike in epoch 1 (too few time steps "
             f"or thresholds too high?); no gradient passes a silent layer")


def _state(r: _Run, epoch_done: int) -> dict[str, Any]:
    """The checkpoint after ``epoch_done`` complete epochs."""
    state = {
        "epoch": epoch_done,
        "arch": r.settings.arch,
        "state_dict": r.model.state_dict(),  # the bare network: the authors' key names
        "best_prec1": r.best_prec1,
        "optimizer": r.optimizer.state_dict(),
        "scheduler": schedule_state(r.settings, epoch_done),
        "rng": capture_rng_state(),
        "settings": r.settings.to_dict(),
        "history": r.history,
        "fired": sorted(r.fired),
    }
    if r.precision.scaler is not None:
        state["scaler"] = r.precision.scaler.state_dict()
    return state


def _save(r: _Run, state: dict[str, Any], is_best: bool) -> None:
    """Rank 0 writes; a full disk or read-only directory becomes a one-line error, and the
    previous checkpoint stays intact (atomic_save replaces files only when complete)."""
    if not is_main_process():
        return
    try:
        save_checkpoint(state, is_best, r.settings.out_dir, r.tag)
    except OSError as error:
        raise UsageError(f"cannot write checkpoint to {r.settings.out_dir}: "
                         f"{error.strerror or error}; the previous checkpoint is kept") from None


def _save_inside_epoch(r: _Run, epoch: int, step: int, meters: EpochMeters,
                       spikes: SpikeCounts) -> None:
    """The latest checkpoint after ``step`` steps of ``epoch``, with every rank's generators,
    partial meters and spike counts (the best checkpoint stays that of a whole epoch)."""
    ranks = all_gather({"rng": capture_rng_state(), "meters": meters.state(),
                        "spikes": spikes.local()})
    _save(r, {**_state(r, epoch), "step": step, "ranks": ranks}, is_best=False)
    barrier()


def _end_epoch(r: _Run, epoch: int, lr: float, train: EpochStats, test: EpochStats) -> None:
    """Best top-1, the epoch's record (CSV, history, summary line), the checkpoints."""
    is_best = r.best_prec1 is None or test.top1 > r.best_prec1
    r.best_prec1 = test.top1 if is_best else r.best_prec1
    record = EpochRecord(epoch + 1, lr, train.loss, train.cross_entropy, train.top1, train.top5,
                         test.loss, test.cross_entropy, test.top1, test.top5,
                         train.samples_per_s, train.seconds + test.seconds)
    r.history.append(record.row())
    _save(r, _state(r, epoch + 1), is_best)
    if r.log is not None:
        r.log.append(record.row())
    _say(record.summary(r.settings.epochs, r.best_prec1))


def _stop_if_signalled(r: _Run, interrupts: Interrupts, epoch: int) -> None:
    """A signal that came during the test pass or the save: the epoch's checkpoint is written,
    so stop here."""
    signum = int(all_reduce_max([float(interrupts.signum)], r.device)[0])
    if signum and epoch + 1 < r.settings.epochs:
        _say(f"interrupted after epoch {epoch + 1}; resume with: {_resume_command(r)}")
        raise Interrupted(signum)


def _resume_command(r: _Run) -> str:
    """The command that started the run, without --resume/--start-epoch/--overwrite, resuming
    from the latest checkpoint."""
    script, *args = r.command
    kept, skip = [], False
    for arg in args:
        if skip or arg in ("--resume", "--start-epoch", "--overwrite"):
            skip = not skip and arg in ("--resume", "--start-epoch")
            continue
        if not arg.startswith(("--resume=", "--start-epoch=")):
            kept.append(arg)
    launcher = (["torchrun", f"--nproc_per_node={r.context.world_size}"] if r.context.enabled
                else ["python"])
    return shlex.join([*launcher, script, *kept, "--resume", r.last])


def _finish(r: _Run, test: EpochStats | None) -> None:
    _say(format_epoch_table(r.history))
    csv_path = os.path.join(r.settings.out_dir, f"metrics_{r.tag}.csv")
    _say(f"best test top-1 {r.best_prec1:.2f}%; checkpoints {r.last} and {r.best}; "
         f"metrics {csv_path}")
    if is_main_process():
        write_training_curves(csv_path, r.settings)
        if r.monitor is not None:
            report_spike_stats(r.monitor, r.settings, r.last, test.top1)


def main(defaults: Experiment, argv: Sequence[str] | None = None,
         description: str | None = None) -> None:
    """Entry point of the scripts: parse ``argv`` over ``defaults``, run, exit.

    A :class:`UsageError` becomes ``error: <message>`` on stderr (rank 0 only under DDP) and
    exit status 2; an interrupt exits 130 (SIGINT) or 143 (SIGTERM) after its one line. The
    DDP process group, if any, is left in every case.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    settings = parse_settings(defaults, argv, description)
    try:
        run(settings, command=[sys.argv[0], *argv])
    except UsageError as error:
        if is_main_process():
            print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Interrupted as interrupt:
        sys.exit(interrupt.status)
    except KeyboardInterrupt:
        if is_main_process():
            print("interrupted; no checkpoint was written for the current epoch",
                  file=sys.stderr, flush=True)
        sys.exit(130)
    finally:
        cleanup()
