"""The training engine: :func:`run` reads set up -> resume -> for each epoch: train, check,
test, save; its steps share one :class:`_Run`. :func:`main` is what the entry scripts call. What
ends a run early is here too: signals, ``--save-every``, a silent layer.
"""
from __future__ import annotations

import contextlib
import os
import random
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

import models
from analysis import SpikeMonitor, plots, spiking_layer_names, write_report
from spiking import LIFNeuron, OutputIntegrator, PoissonEncoder, PoolingNeuron, backend

from .checkpoint import (capture_rng_state, checkpoint_paths, load_checkpoint, load_weights,
                         restore_rng_state, run_tag, save_checkpoint)
from .data import DATASETS, build_datasets, make_loader
from .distributed import (ResumableSampler, all_gather, all_reduce, barrier, cleanup,
                          init_distributed, is_main_process, per_rank_batch, rank, world_size)
from .experiment import Experiment, UsageError, parse_settings
from .export import export_nir
from .loop import (NonFiniteLoss, Precision, adjust_learning_rate, build_optimizer, evaluate,
                   schedule_state, train_one_epoch)
from .metrics import (EpochMeters, EpochProgress, EpochRecord, EpochStats, MetricsLog,
                      format_epoch_table)

AfterStep = Callable[[int, int], None]
_SAVE_NOW = 1  # the --save-every timer's request, below every signal number


@dataclass
class RunResult:
    """What a run ends with: the best test top-1 (percent), the last test pass, every epoch's
    CSV row (a resumed checkpoint's included) and this process's network (unwrapped from DDP)."""

    best_prec1: float
    test: EpochStats | None
    history: list[dict[str, Any]] = field(default_factory=list)
    model: torch.nn.Module | None = None


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run, after its checkpoint was written (unless a second signal
    cut that short); ``status`` is the exit status of a process killed by that signal (130, 143),
    ``step`` the steps done in the epoch (0 at an epoch's end)."""

    def __init__(self, signum: int, step: int = 0) -> None:
        super().__init__(signal.Signals(signum).name)
        self.status, self.step = 128 + signum, step


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of epoch ``epoch``'s draws on process ``rank``, independent of all other epochs': a
    run resumed at an epoch boundary draws what the uninterrupted run drew, and DDP ranks draw
    independently (inside an epoch, a checkpoint's generator states take over)."""
    entropy = [seed, epoch] if rank == 0 else [seed, epoch, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


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


@contextlib.contextmanager
def _counting_spikes(model: nn.Module, counts: dict[str, torch.Tensor]) -> Iterator[None]:
    """Add the nonzero outputs of every layer named in ``counts`` to its count while the block
    runs. The silence check needs only whether a count is 0, so on the CPU a layer that fired is
    not counted again (counting cost 6 % of a LeNet step at T = 100); on a GPU reading the count
    would wait for the device, so it goes on counting there."""
    def count(name: str, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        total = counts[name]
        if total.device.type == "cpu" and total:
            return
        total += torch.count_nonzero(output.detach())

    hooks = [m.register_forward_hook(partial(count, name))
             for name, m in model.named_modules() if name in counts]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


class _Run:
    """What :func:`run` sets up once and its steps share; :meth:`step_done` follows every
    training step."""

    def __init__(self, settings: Experiment, command: Sequence[str],
                 after_step: AfterStep | None) -> None:
        if settings.evaluate and not settings.resume:
            raise UsageError("--evaluate needs a checkpoint: pass --resume PATH "
                             "(refusing to evaluate untrained weights)")
        if settings.deterministic:
            # before the first cuBLAS call; operations without a deterministic kernel only warn
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.settings, self.command, self.after_step = settings, command, after_step
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = init_distributed(torch.device(auto if settings.device == "auto"
                                                    else settings.device))
        self.rank, self.world_size = rank(), world_size()
        self.distributed = torch.distributed.is_initialized()
        seed_everything(settings.seed)
        self.model = build_model(settings).to(self.device)
        self.optimizer = build_optimizer(self.model, settings)
        self.precision = Precision(self.device.type, settings.amp)
        self.tag = run_tag(settings)
        self.last, self.best = checkpoint_paths(settings.out_dir, self.tag)
        self.csv_path = os.path.join(settings.out_dir, f"metrics_{self.tag}.csv")
        # --stats counts one test pass: --evaluate's, or the last epoch's
        self.monitor = _spike_monitor(self.model, settings) if settings.stats else None
        self.start_epoch, self.start_step = settings.start_epoch or 0, 0
        self.best_prec1: float | None = None
        self.checkpoint: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []  # the CSV rows of all epochs so far
        self.fired: set[str] = set()  # layers that have spiked in some epoch
        self.spikes: dict[str, torch.Tensor] = {}  # this epoch's spikes per layer, so far
        self.data_generator = torch.Generator()
        self.test_loader = self.train_loader = self.sampler = self.log = None
        self.epoch = self.signum = self.last_save = 0

    def on_signal(self, signum: int, frame: object) -> None:
        """The first SIGINT/SIGTERM is answered after the current step; a second stops at once."""
        if self.signum:
            _say("interrupted again: stopping now, without a checkpoint of this epoch")
            raise Interrupted(signum)
        self.signum = signum

    def step_done(self, step: int, meters: EpochMeters) -> None:
        """After a signal on any rank, or when ``--save-every`` is due by rank 0's clock (both
        as they stood before the caller's ``after_step`` hook, which runs next): the latest
        checkpoint with every rank's generators, partial meters and spike counts (the best
        stays that of a whole epoch); a signal then stops the run. Under DDP this costs one
        small collective per step (0.26 ms on gloo here)."""
        minutes = self.settings.save_every
        due = (minutes > 0 and time.monotonic() - self.last_save >= 60 * minutes
               and is_main_process())
        request = int(all_reduce([float(self.signum or due)], self.device, "max")[0])
        if self.after_step is not None:
            self.after_step(self.epoch, step)
        if request:
            ranks = all_gather({"rng": capture_rng_state(), "meters": meters.state(),
                                "spikes": {n: int(c) for n, c in self.spikes.items()}})
            _save(self, self.epoch, step=step, ranks=ranks)
            barrier()
            self.last_save = time.monotonic()
        if request > _SAVE_NOW:
            raise Interrupted(request, step)


def run(settings: Experiment, after_step: AfterStep | None = None,
        command: Sequence[str] | None = None) -> RunResult:
    """Train (or with ``settings.evaluate``, only test) as ``settings`` says, writing what
    README.md, *Outputs*, lists (under ``torchrun``: rank 0 alone; the caller leaves the process
    group). ``after_step(epoch, step)`` (0-based epoch, 1-based step) is called after every step;
    ``command`` (default ``sys.argv``) gives the resume hint printed at an interrupt. Raises
    :class:`UsageError` (anything the user can fix, in one line) or :class:`Interrupted`."""
    if settings.export_nir:  # the network as a NIR graph: no data, nothing trained or measured
        return RunResult(float("nan"), None, model=export_nir(settings, build_model))
    r = _Run(settings, command or sys.argv, after_step)
    if settings.resume:
        _resume(r)
    train_set = _load_data(r)
    if settings.evaluate:
        return _evaluate_only(r)
    if r.start_epoch >= settings.epochs:
        _say(f"nothing to train: starting epoch {r.start_epoch} is not below --epochs "
             f"{settings.epochs}")
        return RunResult(r.best_prec1 or 0.0, None, r.history, r.model)
    train_model = _prepare_training(r, train_set)
    test = None
    with _catching_signals(r):
        for epoch in range(r.start_epoch, settings.epochs):
            lr, train = _train_epoch(r, train_model, epoch)
            _check_silence(r, epoch)
            test = _test_pass(r, r.monitor if epoch == settings.epochs - 1 else None)
            _end_epoch(r, epoch, lr, train, test)
            _stop_if_signalled(r, epoch)
    barrier()  # the other ranks may read rank 0's checkpoint next (e.g. --evaluate)
    _finish(r, test)
    return RunResult(r.best_prec1, test, r.history, r.model)


def _spike_monitor(model: nn.Module, settings: Experiment) -> SpikeMonitor:
    names = spiking_layer_names(model)
    layer = settings.raster_layer or names[1]
    if layer not in names:
        raise UsageError(f"--raster-layer {layer!r} is not a spiking layer of {settings.arch}; "
                         f"choose from {', '.join(names)}")
    return SpikeMonitor(raster_layer=layer)


def _resume(r: _Run) -> None:
    """The checkpoint's weights; unless only evaluating, also where it stopped, its best top-1,
    history and optimiser state (the command line decides the hyperparameters from here on)."""
    settings = r.settings
    checkpoint = r.checkpoint = load_checkpoint(settings.resume)
    load_weights(r.model, checkpoint, settings.arch, settings.resume, settings.dataset)
    _say(f"=> loaded checkpoint '{settings.resume}' (epoch {checkpoint.get('epoch', '?')})")
    trained_t = checkpoint.get("settings", {}).get("time_steps")
    if trained_t is not None and trained_t != settings.time_steps:
        _say(f"note: checkpoint was trained with T={trained_t}; this run uses "
             f"T={settings.time_steps}")
    if settings.evaluate:
        return
    try:
        if "optimizer" in checkpoint:
            r.optimizer.load_state_dict(checkpoint["optimizer"])
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f"checkpoint {settings.resume}: optimizer state does not fit: "
                         f"{error}") from None
    for group in r.optimizer.param_groups:
        group.update(momentum=settings.momentum, weight_decay=settings.weight_decay)
    if r.precision.scaler.is_enabled() and "scaler" in checkpoint:
        r.precision.scaler.load_state_dict(checkpoint["scaler"])
    if settings.start_epoch is None:
        r.start_epoch, r.start_step = (int(checkpoint.get(k, 0)) for k in ("epoch", "step"))
    if checkpoint.get("best_prec1") is not None:
        r.best_prec1 = float(checkpoint["best_prec1"])
    r.history, r.fired = list(checkpoint.get("history", [])), set(checkpoint.get("fired", []))
    saved, keys = checkpoint.get("scheduler"), ("base_lr", "milestones", "gamma")
    if saved and any(saved.get(k) != schedule_state(settings, 0)[k] for k in keys):
        _say(f"note: the checkpoint's learning-rate schedule "
             f"({', '.join(f'{k} {saved.get(k)}' for k in keys)}) differs from this run's; "
             f"this run's applies")
    ranks = len(checkpoint.get("ranks", []))
    if r.start_step and ranks != r.world_size:
        raise UsageError(f"checkpoint {settings.resume} was written inside an epoch by {ranks} "
                         f"process(es); resume it with as many (this run has "
                         f"{r.world_size})")


def _load_data(r: _Run) -> Dataset | None:
    """Both data sets (the test set alone for ``--evaluate``), checked against the network; the
    test loader; the run's first line. Returns the training set."""
    settings = r.settings
    train_set, test_set = build_datasets(settings, train=not settings.evaluate)
    expected = tuple(r.model.input_shape)
    for what, dataset in (("test", test_set), ("training", train_set)):
        if dataset is not None and tuple(dataset[0][0].shape) != expected:
            raise UsageError(f"{what} images have shape {tuple(dataset[0][0].shape)} (C, H, W), "
                             f"but {settings.arch} expects {expected}; check --data and the "
                             f"script/dataset")
    if train_set is not None and settings.train_subset > len(train_set):
        raise UsageError(f"--train-subset {settings.train_subset} is larger than the training "
                         f"set ({len(train_set)} images)")
    # each test image is evaluated by exactly one rank (DistributedSampler would pad with
    # repeats and bias the metrics)
    r.test_loader = make_loader(test_set, -(-settings.test_batch_size // r.world_size),
                                settings.workers, r.device,
                                torch.Generator().manual_seed(settings.seed),
                                range(r.rank, len(test_set), r.world_size))
    sizes = (f"{len(test_set)} test" if train_set is None
             else f"{len(train_set)} train / {len(test_set)} test")
    _say(_header(r, sizes))
    return train_set


def _header(r: _Run, sizes: str) -> str:
    """The run's first line: what is trained on what, with which settings, and what runs it."""
    settings = r.settings
    data = "synthetic " + settings.dataset if settings.synthetic else settings.dataset
    runtime = [f"device {r.device}", r.precision.describe(), backend.describe(r.device)]
    if r.distributed:
        runtime.append(f"DDP over {r.world_size} processes "
                       f"({torch.distributed.get_backend()}), global batch split evenly")
    return (f"{r.tag}: {settings.arch} on {data} ({sizes}), T={settings.time_steps}, "
            f"leak {settings.leak}, lr {settings.lr}, momentum {settings.momentum}, "
            f"batch {settings.batch_size}/{settings.test_batch_size}, seed {settings.seed}, "
            + ", ".join(runtime))


def _test_pass(r: _Run, monitor: SpikeMonitor | None = None) -> EpochStats:
    """A test pass with a generator of its own, so that its accuracy depends only on the
    weights, data and device."""
    generator = torch.Generator(device=r.device).manual_seed(r.settings.seed)
    encoder = PoissonEncoder(r.settings.time_steps, r.settings.input_scale, generator)
    with EpochProgress(len(r.test_loader), "Test", r.settings.print_freq) as progress:
        return evaluate(r.model, encoder, r.test_loader, r.device, monitor, progress, r.precision)


def _evaluate_only(r: _Run) -> RunResult:
    """The authors' ``--evaluate``: one test pass, their ``Prec@1`` line and ours."""
    test = _test_pass(r, r.monitor)
    _say(f" * Prec@1 {test.top1:.3f} Prec@5 {test.top5:.3f}")
    _say(f"Test: loss {test.loss:.4f} CE {test.cross_entropy:.4f} ({test.samples} images, "
         f"T={r.settings.time_steps}, {test.seconds:.1f} s)")
    _report_spikes(r, r.settings.resume, test)
    return RunResult(test.top1, test, model=r.model)


def _prepare_training(r: _Run, train_set: Dataset) -> nn.Module:
    """Refuse to overwrite another run's outputs; the CSV; the training loader. Returns the
    network to train (wrapped by DDP under torchrun)."""
    settings = r.settings
    problem = _open_log(r) if is_main_process() else ""
    if all_reduce([float(bool(problem))], r.device, "max")[0]:  # all stop, rank 0 says why
        raise UsageError(problem)
    # Every rank permutes the same way (seed + epoch) and takes every world_size-th index, so
    # the ranks' batches k together are the single-process global batch k.
    r.sampler = ResumableSampler(train_set, r.world_size, r.rank, shuffle=True, seed=settings.seed)
    r.train_loader = make_loader(train_set, per_rank_batch(settings.batch_size, r.world_size),
                                 settings.workers, r.device, r.data_generator, r.sampler)
    if not r.distributed:
        return r.model
    return DistributedDataParallel(
        r.model, device_ids=[r.device.index] if r.device.type == "cuda" else None)


def _open_log(r: _Run) -> str:
    """Rank 0's part of :func:`_prepare_training`: returns what went wrong, or ``""``."""
    settings = r.settings
    found = [p for p in (r.last, r.best, r.csv_path) if os.path.exists(p)]
    if found and not settings.resume and not settings.overwrite:
        return (f"{settings.out_dir} holds a previous run's "
                f"{', '.join(map(os.path.basename, found))}; continue it with --resume "
                f"{r.last}, or start over with --overwrite")
    try:
        os.makedirs(settings.out_dir, exist_ok=True)
        r.log = MetricsLog(r.csv_path, r.start_epoch)
    except OSError as error:
        return f"cannot write to --out-dir {settings.out_dir}: {error.strerror or error}"
    return ""


@contextlib.contextmanager
def _catching_signals(r: _Run) -> Iterator[None]:
    """SIGINT/SIGTERM go to :meth:`_Run.on_signal` while training (signal handlers can only be
    set in the main thread); the ``--save-every`` clock starts."""
    r.last_save = time.monotonic()
    main_thread = threading.current_thread() is threading.main_thread()
    signums = (signal.SIGINT, signal.SIGTERM) if main_thread else ()
    previous = {signum: signal.signal(signum, r.on_signal) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _train_epoch(r: _Run, train_model: nn.Module, epoch: int) -> tuple[float, EpochStats]:
    """One epoch's draws fixed by (seed, epoch, rank), or a resumed epoch's continued from the
    checkpoint; then the training pass. A NaN/infinite loss becomes a one-line error naming
    the step and the checkpoint that is kept (nothing is saved for the diverged epoch)."""
    settings, seed = r.settings, epoch_seed(r.settings.seed, epoch, r.rank)
    lr = adjust_learning_rate(r.optimizer, epoch, settings)
    r.sampler.set_epoch(epoch)
    r.data_generator.manual_seed(seed)
    # spikes and dropout masks: a stream of their own, not a copy of the loader's
    seed_everything(seed ^ 0x5EED)
    done, resumed = 0, {}
    if epoch == r.start_epoch and r.start_step:
        done, resumed = r.start_step, r.checkpoint["ranks"][r.rank]
        restore_rng_state(resumed["rng"])
    r.sampler.skip, r.epoch = done * r.train_loader.batch_size, epoch
    r.spikes = {name: torch.tensor(resumed.get("spikes", {}).get(name, 0), device=r.device)
                for name, m in r.model.named_modules()
                if isinstance(m, (LIFNeuron, PoolingNeuron, OutputIntegrator))}
    encoder = PoissonEncoder(settings.time_steps, settings.input_scale)
    title = f"Epoch {epoch + 1}/{settings.epochs}"
    try:
        with (_counting_spikes(r.model, r.spikes),
              EpochProgress(done + len(r.train_loader), title, settings.print_freq, done=done)
              as bar):
            return lr, train_one_epoch(train_model, encoder, r.train_loader, r.optimizer,
                                       r.device, bar, r.world_size, r.precision,
                                       EpochMeters(resumed.get("meters")), r.step_done,
                                       done + 1)
    except NonFiniteLoss as error:
        raise UsageError(f"loss became {error.value} at epoch {epoch + 1}, step {error.step}; "
                         f"{_kept(r)} (lower --lr?)") from None
    except Interrupted as interrupt:  # after the bar is closed, so that the line stands alone
        _say_interrupted(r, f"at epoch {epoch + 1}, step {interrupt.step}")
        raise


def _kept(r: _Run) -> str:
    """Which checkpoint a run that stops now leaves behind."""
    return (f"last good checkpoint kept: {r.last}" if os.path.exists(r.last)
            else "no checkpoint was written")


def _check_silence(r: _Run, epoch: int) -> None:
    """A layer that fired in an earlier epoch and emitted nothing in this one has gone silent:
    no gradient passes it any more, so the run stops (``--allow-silent``: warns) before this
    epoch is saved. Layers silent from the start get a warning in the run's first epoch."""
    summed = all_reduce([float(c) for c in r.spikes.values()], r.device, "sum")
    counts = dict(zip(r.spikes, map(int, summed)))  # over all ranks
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


def _save(r: _Run, epoch_done: int, is_best: bool = False, **inside_epoch: Any) -> None:
    """The checkpoint after ``epoch_done`` complete epochs (see :mod:`training.checkpoint`),
    written by rank 0; a full disk or read-only directory becomes a one-line error, and the
    previous checkpoint stays intact (it is replaced only by a complete file)."""
    if not is_main_process():
        return
    state = {"epoch": epoch_done, "arch": r.settings.arch,
             "state_dict": r.model.state_dict(),  # the bare network: the authors' key names
             "best_prec1": r.best_prec1, "optimizer": r.optimizer.state_dict(),
             "scheduler": schedule_state(r.settings, epoch_done), "settings": asdict(r.settings),
             "history": r.history, "fired": sorted(r.fired), **inside_epoch}
    if r.precision.scaler.is_enabled():
        state["scaler"] = r.precision.scaler.state_dict()
    try:
        save_checkpoint(state, is_best, r.settings.out_dir, r.tag)
    except OSError as error:
        raise UsageError(f"cannot write checkpoint to {r.settings.out_dir}: "
                         f"{error.strerror or error}; the previous checkpoint is kept") from None


def _end_epoch(r: _Run, epoch: int, lr: float, train: EpochStats, test: EpochStats) -> None:
    """Best top-1, the epoch's record (history, checkpoints, CSV, summary line)."""
    is_best = r.best_prec1 is None or test.top1 > r.best_prec1
    r.best_prec1 = test.top1 if is_best else r.best_prec1
    record = EpochRecord(epoch + 1, lr, train.loss, train.cross_entropy, train.top1, train.top5,
                         test.loss, test.cross_entropy, test.top1, test.top5,
                         train.samples_per_s, train.seconds + test.seconds)
    r.history.append(record.row())
    _save(r, epoch + 1, is_best)
    if r.log is not None:
        r.log.append(r.history[-1])
    _say(record.summary(r.settings.epochs, r.best_prec1))


def _stop_if_signalled(r: _Run, epoch: int) -> None:
    """A signal that came during the test pass or the save: the epoch's checkpoint is written,
    so stop here."""
    signum = int(all_reduce([float(r.signum)], r.device, "max")[0])
    if signum and epoch + 1 < r.settings.epochs:
        _say_interrupted(r, f"after epoch {epoch + 1}")
        raise Interrupted(signum)


def _say_interrupted(r: _Run, where: str) -> None:
    """Where the run stopped, and its command line (without --resume, --start-epoch and
    --overwrite) resuming from the latest checkpoint."""
    script, *args = r.command
    kept, skip = [], False
    for arg in args:
        if skip or arg in ("--resume", "--start-epoch", "--overwrite"):
            skip = not skip and arg in ("--resume", "--start-epoch")
        elif not arg.startswith(("--resume=", "--start-epoch=")):
            kept.append(arg)
    launcher = (["torchrun", f"--nproc_per_node={r.world_size}"] if r.distributed
                else ["python"])
    _say(f"interrupted {where}; resume with: "
         f"{shlex.join([*launcher, script, *kept, '--resume', r.last])}")


def _finish(r: _Run, test: EpochStats | None) -> None:
    """The table of all epochs, where everything went, the curves and ``--stats``' report."""
    settings = r.settings
    _say(format_epoch_table(r.history))
    _say(f"best test top-1 {r.best_prec1:.2f}%; checkpoints {r.last} and {r.best}; "
         f"metrics {r.csv_path}")
    if is_main_process():
        data = f"synthetic {settings.dataset}" if settings.synthetic else settings.dataset
        width = "" if settings.width == 1 else f", width {settings.width:g}"
        title = f"{r.tag}: {settings.arch} on {data}, T = {settings.time_steps}{width}"
        drawn = plots.plot_training_curves(
            r.csv_path, os.path.join(settings.out_dir, f"curves_{r.tag}.png"), title=title)
        print(f"training curves: {drawn}" if drawn else plots.MATPLOTLIB_HINT, flush=True)
    _report_spikes(r, r.last, test)


def _report_spikes(r: _Run, checkpoint: str, test: EpochStats) -> None:
    """``--stats``: the table, ``spike_stats_<tag>.json`` and ``.png`` of the monitored pass,
    over every rank's share of the test set."""
    settings = r.settings
    if r.monitor is None:
        return
    others = all_gather(r.monitor.counts())[1:]
    if not is_main_process():
        return
    for counts in others:
        r.monitor.add(counts)
    meta = {"arch": settings.arch, "dataset": settings.dataset, "synthetic": settings.synthetic,
            "width": settings.width, "checkpoint": checkpoint, "test_top1": test.top1,
            "seed": settings.seed}
    stem = os.path.join(settings.out_dir, f"spike_stats_{r.tag}")
    write_report(r.monitor, f"{stem}.json", f"{stem}.png", settings.mac_energy,
                 settings.ac_energy, meta)


def main(defaults: Experiment, argv: Sequence[str] | None = None,
         description: str | None = None) -> None:
    """Entry point of the scripts: parse ``argv`` over ``defaults``, run, exit: 2 after
    ``error: <message>`` on stderr, 130 (SIGINT) or 143 (SIGTERM) after an interrupt's line.
    The DDP process group, if any, is left in every case."""
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
