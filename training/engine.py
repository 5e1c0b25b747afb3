"""The training engine: :func:`run` sets up (device, network, optimiser, the output folder checked,
a checkpoint resumed), loads the data, then per epoch trains, checks for silent layers, tests and
saves. :func:`main` is what the entry scripts call. The steps share one :class:`_Run`; what lives
across epochs is its :class:`~training.checkpoint.TrainingState`. Signals follow
:mod:`training.interrupts`.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

import models
from analysis import SpikeMonitor, plots, spiking_layer_names, write_report
from spiking import OutputIntegrator, PoissonEncoder, SpikingNeuron, backends

from . import cpu_threads
from .checkpoint import (TrainingState, checkpoint_contents, checkpoint_paths, describe_checkpoint,
                         load_checkpoint, load_weights, rank_state, read_training_state,
                         restore_optimizer, restore_rank, resume_notes, run_tag, save_checkpoint)
from .data import build_datasets, dataset_info, make_loader
from .distributed import (ResumableSampler, all_gather, all_reduce, barrier, cleanup,
                          init_distributed, is_main_process, per_rank_batch, rank, world_size)
from .experiment import Experiment, UsageError, parse_settings
from .export import export_nir
from .files import check_writable
from .interrupts import Interrupted, Signals
from .loop import (NonFiniteLoss, Precision, adjust_learning_rate, build_optimizer, evaluate,
                   set_tf32, train_one_epoch)
from .metrics import (EpochMeters, EpochProgress, EpochRecord, EpochStats, format_epoch_table,
                      write_metrics)
from .versions import check_torch

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
    info = dataset_info(settings.dataset)
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


@dataclass(frozen=True)
class _Outputs:
    """The files a run writes in ``--out-dir``, named by the run's tag."""

    tag: str
    last: str
    best: str
    csv: str
    curves: str
    stats: str  # the --stats report's stem: .json and .png follow

    @classmethod
    def of(cls, settings: Experiment) -> _Outputs:
        tag = run_tag(settings)
        in_dir = partial(os.path.join, settings.out_dir)
        return cls(tag, *checkpoint_paths(settings.out_dir, tag), in_dir(f"metrics_{tag}.csv"),
                   in_dir(f"curves_{tag}.png"), in_dir(f"spike_stats_{tag}"))


@dataclass(eq=False)
class _Run:
    """What :func:`run` sets up once and its steps share. Only ``state`` (what lives across
    epochs), ``latest`` and ``best`` (the checkpoints a resume or a failure message can name:
    files this run wrote or resumed from) and ``saved_at`` change as it goes on."""

    settings: Experiment
    device: torch.device
    model: models.SpikingNetwork
    optimizer: torch.optim.SGD
    precision: Precision
    outputs: _Outputs
    signals: Signals
    after_step: AfterStep | None
    monitor: SpikeMonitor | None
    state: TrainingState
    latest: str | None = None
    best: str | None = None
    saved_at: float = 0.0  # time.monotonic() of the last checkpoint, for --save-every


@dataclass
class _Epoch:
    """One training epoch as it runs: what a checkpoint written inside it needs."""

    index: int  # 0-based
    lr: float
    meters: EpochMeters
    spikes: dict[str, torch.Tensor]  # this process's spikes per layer so far
    steps: int = 0  # steps done so far, those before a resume included
    stats: EpochStats | None = None  # once the training pass is over, its averages
    at_end: list[float] | None = None  # and its meters' state, for a checkpoint after it


def run(settings: Experiment, after_step: AfterStep | None = None) -> RunResult:
    """Train (or with ``settings.evaluate``, only test) as ``settings`` says, writing what
    docs/usage.md, *Outputs*, lists (under ``torchrun``: rank 0 alone; the caller leaves the
    process group). ``after_step(epoch, step)`` (0-based epoch, 1-based step) is called after
    every training step. Raises :class:`UsageError` (anything the user can fix, in one line) or
    :class:`Interrupted` (after printing where the run stopped and how to resume)."""
    if settings.export_nir:  # the network as a NIR graph: no data, nothing trained or measured
        return RunResult(float("nan"), None, model=export_nir(settings, build_model))
    if settings.evaluate and not settings.resume:
        raise UsageError("--evaluate needs a checkpoint: pass --resume PATH "
                         "(refusing to evaluate untrained weights)")
    signals, r = Signals(), None
    with signals.catching():
        try:
            r = _set_up(settings, signals, after_step)
            train_set, test_loader = _load_data(r)
            if settings.evaluate:
                return _evaluate_only(r, test_loader)
            return _train(r, train_set, test_loader)
        except Interrupted as stop:
            _say(stop.message or _stopped_at_once(signals.phase, r))
            raise


def _set_up(settings: Experiment, signals: Signals, after_step: AfterStep | None) -> _Run:
    """Device (joining torchrun's process group), the output folder checked before any work,
    network, optimiser, precision; the ``--resume`` checkpoint read."""
    if settings.deterministic:
        # before the first cuBLAS call; operations without a deterministic kernel only warn
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=True)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = init_distributed(torch.device(auto if settings.device == "auto" else settings.device))
    if settings.sync_debug and device.type != "cuda":
        raise UsageError(f"--sync-debug checks CUDA's waits; this run is on {device}")
    set_tf32(settings.tf32)
    outputs = _Outputs.of(settings)
    problem = _output_problem(settings, outputs) if is_main_process() else ""
    if all_reduce([float(bool(problem))], device, "max")[0]:  # all stop, rank 0 says why
        raise UsageError(problem or "rank 0 cannot write to --out-dir")
    seed_everything(settings.seed)
    model = build_model(settings).to(device)
    # --stats counts one test pass: --evaluate's, or the last epoch's
    monitor = _spike_monitor(model, settings) if settings.stats else None
    r = _Run(settings, device, model, build_optimizer(model, settings),
             Precision(device.type, settings.amp, settings.tf32), outputs, signals, after_step, monitor,
             TrainingState(epoch=settings.start_epoch or 0))
    if settings.resume:
        _resume(r)
    return r


def _output_problem(settings: Experiment, outputs: _Outputs) -> str:
    """What stands in the way of writing the run's outputs, or ``""``: another run's files that
    only ``--resume`` or ``--overwrite`` may touch, or a folder that cannot be written (an
    evaluation writes only ``--stats``' report)."""
    if settings.evaluate and not settings.stats:
        return ""
    found = [p for p in (outputs.last, outputs.best, outputs.csv) if os.path.exists(p)]
    if found and not (settings.evaluate or settings.resume or settings.overwrite):
        resumable = next((p for p in (outputs.last, outputs.best) if os.path.exists(p)), "")
        way = f"continue it with --resume {resumable}, or " if resumable else ""
        return (f"{settings.out_dir} holds a previous run's "
                f"{', '.join(map(os.path.basename, found))}; {way}start over with --overwrite")
    try:
        check_writable(settings.out_dir)
    except OSError as error:
        return f"cannot write to --out-dir {settings.out_dir}: {error.strerror or error}"
    return ""


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
    checkpoint = load_checkpoint(settings.resume)
    load_weights(r.model, checkpoint, settings.arch, settings.resume, settings.dataset)
    _say(f"=> loaded checkpoint '{settings.resume}' ({describe_checkpoint(checkpoint)})")
    for note in resume_notes(checkpoint, settings):
        _say(f"note: {note}")
    if settings.evaluate:
        return
    restore_optimizer(checkpoint, r.optimizer, r.precision.scaler, settings)
    state = read_training_state(checkpoint)
    if settings.start_epoch is not None:
        state = replace(state, epoch=settings.start_epoch, step=0, ranks=[])
    if state.step and len(state.ranks) != world_size():
        raise UsageError(f"checkpoint {settings.resume} was written inside an epoch by "
                         f"{len(state.ranks)} process(es); resume it with as many (this run has "
                         f"{world_size()})")
    r.state, r.latest = state, settings.resume
    r.best = r.outputs.best if os.path.exists(r.outputs.best) else None


def _load_data(r: _Run) -> tuple[Dataset | None, DataLoader]:
    """Both data sets (the test set alone for ``--evaluate``), checked against the network; the
    run's first line. Returns the training set and the test loader."""
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
    test_loader = make_loader(test_set, -(-settings.test_batch_size // world_size()),
                              settings.workers, r.device,
                              torch.Generator().manual_seed(settings.seed),
                              range(rank(), len(test_set), world_size()))
    sizes = (f"{len(test_set)} test" if train_set is None
             else f"{len(train_set)} train / {len(test_set)} test")
    _say(_header(r, sizes))
    return train_set, test_loader


def _header(r: _Run, sizes: str) -> str:
    """The run's first line: what is trained on what, with which settings, and what runs it."""
    settings = r.settings
    data = "synthetic " + settings.dataset if settings.synthetic else settings.dataset
    runtime = [f"device {r.device}", r.precision.describe(), backends.describe(r.device)]
    if r.device.type == "cpu":
        threads = torch.get_num_threads()
        runtime.append(f"{threads} thread{'s' * (threads > 1)}, {cpu_threads.describe()}")
    if torch.distributed.is_initialized():
        runtime.append(f"DDP over {world_size()} processes "
                       f"({torch.distributed.get_backend()}), global batch split evenly")
    return (f"{r.outputs.tag}: {settings.arch} on {data} ({sizes}), T={settings.time_steps}, "
            f"leak {settings.leak}, lr {settings.lr}, momentum {settings.momentum}, "
            f"batch {settings.batch_size}/{settings.test_batch_size}, seed {settings.seed}, "
            + ", ".join(runtime))


class _PassStopped(Exception):
    """A signal stopped a test pass before its batch ``index`` (0-based) of ``batches``."""

    def __init__(self, signum: int, index: int, batches: int) -> None:
        super().__init__(f"before test batch {index + 1} of {batches}")
        self.signum = signum


def _test_pass(r: _Run, loader: DataLoader, monitor: SpikeMonitor | None = None) -> EpochStats:
    """A test pass with a generator of its own, so that its accuracy depends only on the
    weights, data and device. A signal stops it before the next batch (:class:`_PassStopped`):
    under DDP all processes look at the batches every one of them has, and stop together."""
    generator = torch.Generator(device=r.device).manual_seed(r.settings.seed)
    encoder = PoissonEncoder(r.settings.time_steps, r.settings.input_scale, generator)
    shared = -int(all_reduce([-float(len(loader))], r.device, "max")[0])  # the fewest batches

    def stop_if_signalled(index: int) -> None:
        if index < shared:
            signum = int(all_reduce([float(r.signals.signum)], r.device, "max")[0])
            if signum:
                raise _PassStopped(signum, index, len(loader))

    with EpochProgress(len(loader), "Test", r.settings.print_freq) as progress:
        return evaluate(r.model, encoder, loader, r.device, monitor, progress, r.precision,
                        stop_if_signalled)


def _evaluate_only(r: _Run, test_loader: DataLoader) -> RunResult:
    """The authors' ``--evaluate``: one test pass, their ``Prec@1`` line and ours."""
    r.signals.phase = "evaluate"
    try:
        test = _test_pass(r, test_loader, r.monitor)
    except _PassStopped as stop:
        raise Interrupted(stop.signum, f"interrupted during the evaluation, {stop}: nothing "
                                       f"was written") from None
    r.signals.phase = "finish"
    _say(f" * Prec@1 {test.top1:.3f} Prec@5 {test.top5:.3f}")
    _say(f"Test: loss {test.loss:.4f} CE {test.cross_entropy:.4f} ({test.samples} images, "
         f"T={r.settings.time_steps}, {test.seconds:.1f} s)")
    _report_spikes(r, r.settings.resume, test)
    return RunResult(test.top1, test, model=r.model)


def _train(r: _Run, train_set: Dataset, test_loader: DataLoader) -> RunResult:
    """Every epoch from where the run stands; then the table, curves and ``--stats``."""
    settings = r.settings
    if r.state.epoch >= settings.epochs:
        _say(f"nothing to train: starting epoch {r.state.epoch} is not below --epochs "
             f"{settings.epochs}")
        return RunResult(r.state.best_prec1 or 0.0, None, r.state.history, r.model)
    # Every rank permutes the same way (seed + epoch) and takes every world_size-th index, so
    # the ranks' batches k together are the single-process global batch k.
    sampler = ResumableSampler(train_set, world_size(), rank(), shuffle=True, seed=settings.seed)
    loader = make_loader(train_set, per_rank_batch(settings.batch_size, world_size()),
                         settings.workers, r.device, torch.Generator(), sampler)
    model = r.model
    if torch.distributed.is_initialized():
        model = DistributedDataParallel(
            model, device_ids=[r.device.index] if r.device.type == "cuda" else None)
    r.saved_at = time.monotonic()
    test = None
    for epoch in range(r.state.epoch, settings.epochs):
        test = _epoch(r, model, loader, test_loader, epoch)
    barrier()  # the other ranks may read rank 0's checkpoint next (e.g. --evaluate)
    r.signals.phase = "finish"
    _finish(r, test)
    return RunResult(r.state.best_prec1, test, r.state.history, r.model)


def _epoch(r: _Run, model: nn.Module, loader: DataLoader, test_loader: DataLoader,
           epoch: int) -> EpochStats:
    """Train, check for silent layers, test, save; stop here if a signal came. A signal during
    the test pass saves the trained epoch as a checkpoint inside it (the test pass runs again on
    resume) and stops."""
    r.signals.phase = "train"
    trained = _train_epoch(r, model, loader, epoch)
    r.signals.phase = "test"
    _check_silence(r, trained)
    monitor = r.monitor if epoch == r.settings.epochs - 1 else None
    try:
        test = _test_pass(r, test_loader, monitor)
    except _PassStopped as stop:
        _save_inside_epoch(r, trained, trained.at_end)
        raise Interrupted(stop.signum, f"interrupted during the test pass of epoch {epoch + 1}, "
                                       f"{stop}: the epoch's training is saved, and its test pass "
                                       f"runs again on resume; {_resume_hint(r)}") from None
    r.signals.phase = "save"
    _end_epoch(r, trained, test)
    signum = int(all_reduce([float(r.signals.signum)], r.device, "max")[0])
    if signum and epoch + 1 < r.settings.epochs:
        raise Interrupted(signum, f"interrupted after epoch {epoch + 1}; {_resume_hint(r)}")
    return test


def _start_epoch(r: _Run, loader: DataLoader, epoch: int) -> tuple[_Epoch, int]:
    """The epoch's draws fixed by (seed, epoch, rank), or a resumed epoch's generators, partial
    metrics and spike counts from the checkpoint, and the loader set to the images not yet
    trained on. Returns the epoch and the steps done before."""
    settings, seed = r.settings, epoch_seed(r.settings.seed, epoch, rank())
    lr = adjust_learning_rate(r.optimizer, epoch, settings)
    loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(seed)
    # spikes and dropout masks: a stream of their own, not a copy of the loader's
    seed_everything(seed ^ 0x5EED)
    meters, spikes, done = None, {}, 0
    if epoch == r.state.epoch and r.state.step:
        meters, spikes = restore_rank(r.state.ranks[rank()])
        done = r.state.step
    trained = EpochMeters(meters)
    # the images this process has trained on in the epoch: right whatever -b was then
    loader.sampler.skip = int(trained.count)
    if loader.sampler.skip > loader.sampler.num_samples:
        raise UsageError(f"checkpoint {settings.resume} was written after {loader.sampler.skip} "
                         f"images of epoch {epoch + 1} per process, but this run's training set "
                         f"gives each process {loader.sampler.num_samples}; resume it with the "
                         f"same data (--data, --train-subset, --synthetic-size)")
    counts = {name: torch.tensor(spikes.get(name, 0), device=r.device)
              for name, m in r.model.named_modules()
              if isinstance(m, (SpikingNeuron, OutputIntegrator))}
    return _Epoch(epoch, lr, trained, counts, steps=done), done


def _train_epoch(r: _Run, model: nn.Module, loader: DataLoader, epoch: int) -> _Epoch:
    """One training pass (the rest of one, resumed). A NaN/infinite loss becomes a one-line
    error naming the step and the checkpoint that is kept (nothing is saved for the diverged
    epoch)."""
    settings = r.settings
    ep, done = _start_epoch(r, loader, epoch)
    encoder = PoissonEncoder(settings.time_steps, settings.input_scale)
    title = f"Epoch {epoch + 1}/{settings.epochs}"
    try:
        with (_counting_spikes(r.model, ep.spikes),
              EpochProgress(done + len(loader), title, settings.print_freq, done, ep.meters)
              as bar):
            ep.stats = train_one_epoch(model, encoder, loader, r.optimizer, r.device, bar,
                                       world_size(), r.precision, ep.meters,
                                       partial(_step_done, r, ep), done + 1,
                                       settings.sync_debug)
    except NonFiniteLoss as error:
        raise UsageError(f"loss became {error.value} at epoch {epoch + 1}, step {error.step}; "
                         f"{_kept(r)} (lower --lr?)") from None
    ep.steps, ep.at_end = done + len(loader), ep.meters.state()
    return ep


def _step_done(r: _Run, ep: _Epoch, step: int, meters: EpochMeters) -> None:
    """After a signal on any rank, or when ``--save-every`` is due by rank 0's clock (both as
    they stood before the caller's ``after_step`` hook, which runs next): the checkpoint inside
    the epoch (the best stays that of a whole epoch); a signal then stops the run. Under DDP
    this costs one small collective per step (0.26 ms on gloo here)."""
    ep.steps = step
    minutes = r.settings.save_every
    due = minutes > 0 and time.monotonic() - r.saved_at >= 60 * minutes and is_main_process()
    request = int(all_reduce([float(r.signals.signum or due)], r.device, "max")[0])
    if r.after_step is not None:
        r.after_step(ep.index, step)
    if request:
        _save_inside_epoch(r, ep, meters.state())
    if request > _SAVE_NOW:
        raise Interrupted(request, f"interrupted at epoch {ep.index + 1}, step {step}; "
                                   f"{_resume_hint(r)}")


def _save_inside_epoch(r: _Run, ep: _Epoch, meters: list[float]) -> None:
    """The latest checkpoint at ``ep.steps`` steps into the epoch, with every rank's
    generators, partial metrics and spike counts."""
    ranks = all_gather(rank_state(meters, ep.spikes))
    _save(r, replace(r.state, epoch=ep.index, step=ep.steps, ranks=ranks))
    barrier()


def _check_silence(r: _Run, ep: _Epoch) -> None:
    """A layer that fired in an earlier epoch and emitted nothing in this one has gone silent:
    no gradient passes it any more, so the run stops (``--allow-silent``: warns) before this
    epoch is saved. Layers silent from the start get a warning in the run's first epoch."""
    summed = all_reduce([float(c) for c in ep.spikes.values()], r.device, "sum")
    counts = dict(zip(ep.spikes, map(int, summed)))  # over all ranks
    silent = [name for name, count in counts.items() if count == 0]
    gone = [name for name in silent if name in r.state.fired]
    r.state = replace(r.state, fired=r.state.fired | {n for n, c in counts.items() if c})
    if gone:
        nothing = "no spike" + (" (the output: only zeros)" if "output" in gone else "")
        message = (f"{', '.join(gone)} went silent in epoch {ep.index + 1}: {nothing} over the "
                   f"whole training epoch")
        if not r.settings.allow_silent:
            # the weights that started this epoch were silent already: the best ones matter
            raise UsageError(f"{message}; stopped, {_kept(r, best_too=True)} (lower --lr?, or "
                             f"--allow-silent to go on)")
        _say(f"warning: {message}")
    elif silent and ep.index == 0:
        _say(f"warning: {', '.join(silent)} emitted no spike in epoch 1 (too few time steps "
             f"or thresholds too high?); no gradient passes a silent layer")


def _save(r: _Run, state: TrainingState, is_best: bool = False) -> None:
    """``state``'s checkpoint (see :mod:`training.checkpoint`), written by rank 0 while signals
    wait; a full disk or read-only directory becomes a one-line error, and the previous
    checkpoint stays intact (it is replaced only by a complete file)."""
    if is_main_process():
        contents = checkpoint_contents(state, r.settings, r.model, r.optimizer,
                                       r.precision.scaler)
        try:
            with r.signals.during("save"):
                save_checkpoint(contents, is_best, r.settings.out_dir, r.outputs.tag)
        except OSError as error:
            raise UsageError(f"cannot write checkpoint to {r.settings.out_dir}: "
                             f"{error.strerror or error}; the previous checkpoint is "
                             f"kept") from None
    r.latest, r.saved_at = r.outputs.last, time.monotonic()
    r.best = r.outputs.best if is_best else r.best


def _end_epoch(r: _Run, ep: _Epoch, test: EpochStats) -> None:
    """Best top-1, the epoch's record (history, checkpoints, CSV, summary line)."""
    train, best = ep.stats, r.state.best_prec1
    is_best = best is None or test.top1 > best
    record = EpochRecord(ep.index + 1, ep.lr, train.loss, train.cross_entropy, train.top1,
                         train.top5, test.loss, test.cross_entropy, test.top1, test.top5,
                         train.samples_per_s, train.seconds + test.seconds)
    r.state = replace(r.state, epoch=ep.index + 1, step=0, ranks=[],
                      best_prec1=test.top1 if is_best else best,
                      history=[*r.state.history, record.row()])
    _save(r, r.state, is_best)
    if is_main_process():
        try:
            write_metrics(r.outputs.csv, r.state.history)
        except OSError as error:
            raise UsageError(f"cannot write {r.outputs.csv}: {error.strerror or error}; the "
                             f"epoch's checkpoint is written") from None
    _say(record.summary(r.settings.epochs, r.state.best_prec1))


def _kept(r: _Run, best_too: bool = False) -> str:
    """Which checkpoints a run that stops now leaves behind: the last one (and with
    ``best_too`` the best one), naming only files that this run wrote or resumed from."""
    if best_too and None not in (r.best, r.state.best_prec1, r.latest):
        return (f"the best checkpoint, {r.best} (test top-1 {r.state.best_prec1:.2f}%), and the "
                f"last, {r.latest}, are kept")
    if r.latest is not None:
        return f"last good checkpoint kept: {r.latest}"
    return "no checkpoint was written"


def _resume_hint(r: _Run) -> str:
    """How to go on from the latest checkpoint, or that there is none."""
    if r.latest is None:
        return "no checkpoint was written, so there is nothing to resume"
    without = " (and without --start-epoch)" if r.settings.start_epoch is not None else ""
    return f"to resume, run the same command with --resume {r.latest}{without}"


def _stopped_at_once(phase: str, r: _Run | None) -> str:
    """The line for a signal that stopped the run at once (:mod:`training.interrupts`)."""
    if r is None or phase == "setup":
        return "interrupted before the run began; nothing was written"
    if phase == "evaluate":
        return "interrupted again: the evaluation stopped at once; nothing was written"
    if phase == "finish":
        return (f"interrupted after the last epoch was saved ({r.latest}); the table, curves "
                f"or statistics may be missing")
    return (f"interrupted again: stopped at once (what the last checkpoint does not hold is "
            f"lost); {_resume_hint(r)}")


def _finish(r: _Run, test: EpochStats | None) -> None:
    """The table of all epochs, where everything went, the curves and ``--stats``' report."""
    settings, outputs = r.settings, r.outputs
    _say(format_epoch_table(r.state.history))
    written = [p for p in (r.latest, r.best) if p is not None]
    _say(f"best test top-1 {r.state.best_prec1:.2f}%; checkpoint{'s' * (len(written) > 1)} "
         f"{' and '.join(written)}; metrics {outputs.csv}")
    if is_main_process():
        data = f"synthetic {settings.dataset}" if settings.synthetic else settings.dataset
        width = "" if settings.width == 1 else f", width {settings.width:g}"
        title = f"{outputs.tag}: {settings.arch} on {data}, T = {settings.time_steps}{width}"
        drawn = plots.plot_training_curves(outputs.csv, outputs.curves, title=title,
                                           classes=dataset_info(settings.dataset).num_classes)
        print(f"training curves: {drawn}" if drawn else plots.MATPLOTLIB_HINT, flush=True)
    _report_spikes(r, r.latest, test)


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
    write_report(r.monitor, f"{r.outputs.stats}.json", f"{r.outputs.stats}.png",
                 settings.mac_energy, settings.ac_energy, meta)


def main(defaults: Experiment, argv: Sequence[str] | None = None,
         description: str | None = None) -> None:
    """Entry point of the scripts: parse ``argv`` over ``defaults``, run, exit: 2 after
    ``error: <message>`` on stderr, 130 (SIGINT) or 143 (SIGTERM) after an interrupt's line.
    The DDP process group, if any, is left in every case."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_torch()
        run(parse_settings(defaults, argv, description))
    except UsageError as error:
        if is_main_process():
            print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Interrupted as interrupt:
        sys.exit(interrupt.status)
    except KeyboardInterrupt:  # outside run's handlers (another thread's signal handling)
        _say("interrupted")
        sys.exit(130)
    finally:
        cleanup()
