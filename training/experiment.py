"""An experiment's settings and the command line that follows from them: each setting is one
field of :class:`Experiment`, and a field with a flag carries its flag names, help text and check
(:func:`setting`), from which :func:`build_parser` makes the command line."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

import torch

from models import MODELS

from .datasets import DATASETS, DatasetInfo

AUTHORS, OURS, STATS = "the authors' flags", "this project's flags", "spike statistics"


class UsageError(Exception):
    """A problem the user can fix (bad checkpoint path, wrong architecture, missing data): the
    scripts print ``error: <message>`` and exit 2, as argparse does for bad arguments."""


def setting(default: Any, *flags: str, help: str, group: str = OURS,
            rule: tuple[str, Callable[[Any], bool]] | None = None, what: str = "",
            only_for: Callable[[DatasetInfo], bool] | None = None,
            **argparse_options: Any) -> Any:
    """A field of :class:`Experiment` with the command-line ``flags``.

    ``default`` is neutral (``MISSING``: every script sets it); ``help`` gets `` (default:
    ...)`` unless the flag is a switch or the default empty. Values failing ``rule``'s
    ``(phrase, predicate)`` are rejected with ``<what> must be <phrase>`` (``what``: the field
    name, spaced). ``only_for``: the flag exists only in the scripts of the data sets
    (:class:`~training.datasets.DatasetInfo`) it holds for. The rest goes to ``add_argument``
    (``action``, ``choices``, ``type``, ``metavar``); ``choices`` may be a function, called when
    the command line is built.
    """
    metadata = dict(flags=flags, help=help, group=group, rule=rule, what=what, only_for=only_for,
                    options=argparse_options)
    return field(default=default, metadata=metadata)


_AT_LEAST_0 = ("at least 0", lambda v: v >= 0)
_AT_LEAST_1 = ("at least 1", lambda v: v >= 1)
_POSITIVE = ("positive", lambda v: v > 0)


def _device(text: str) -> str:
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (try auto, cpu, cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r} requested but CUDA is not available")
    return text


@dataclass(frozen=True)
class Experiment:
    """Everything one training or evaluation run needs. The defaults are neutral; each entry
    script sets the values of its published run, and the command line overrides the fields that
    have a flag (``python mnist_LeNet.py --help``). Fields without a flag:

    Attributes:
        tag: names the outputs: ``checkpointT1_<tag>.pth.tar``, ``model_bestT1_<tag>.pth.tar``,
            ``metrics_<tag>.csv``.
        dataset: a name in :data:`training.datasets.DATASETS` (``mnist``, ``fashion_mnist``,
            ``cifar10``, ``svhn``, or one a script registered).
        threshold / pool_threshold: firing thresholds of hidden LIF and pooling neurons.
        input_scale: a of the Poisson encoder (0.5 MNIST, 1 otherwise).
        dropout: p of the time-held dropout after hidden LIF layers (0 = none).
        milestones, lr_gamma: the learning rate is multiplied by ``lr_gamma`` at the start of
            every 0-based epoch index listed in ``milestones`` (cumulative).
        crop_padding: RandomCrop(H, padding) when > 0; ``horizontal_flip``: RandomHorizontalFlip.
        mean / std: per-channel Normalize after ToTensor; ``None`` for no normalisation.
    """

    tag: str
    dataset: str
    arch: str = setting(MISSING, "-a", "--arch", group=AUTHORS, type=str.lower,
                        choices=lambda: sorted(MODELS), help="network architecture")
    workers: int = setting(2, "-j", "--workers", group=AUTHORS, rule=_AT_LEAST_0,
                           help="data loading worker processes")
    epochs: int = setting(1, "--epochs", group=AUTHORS, rule=_AT_LEAST_1,
                          help="total number of epochs")
    start_epoch: int | None = setting(
        None, "--start-epoch", group=AUTHORS, rule=_AT_LEAST_0, type=int,
        help="epoch index to start at (default: 0, or the resumed checkpoint's)")
    batch_size: int = setting(64, "-b", "--batch-size", group=AUTHORS, rule=_AT_LEAST_1,
                              help="global training mini-batch size, split evenly over "
                                   "torchrun's processes")
    lr: float = setting(0.1, "--lr", "--learning-rate", group=AUTHORS, rule=_POSITIVE,
                        what="learning rate", help="initial learning rate")
    momentum: float = setting(0.0, "--momentum", group=AUTHORS, rule=_AT_LEAST_0,
                              help="SGD momentum (the authors' scripts parsed it but never "
                                   "used it)")
    weight_decay: float = setting(5e-4, "--wd", "--weight-decay", group=AUTHORS,
                                  rule=_AT_LEAST_0, help="SGD weight decay")
    print_freq: int = setting(10, "-p", "--print-freq", group=AUTHORS, rule=_AT_LEAST_1,
                              what="print frequency",
                              help="batches between progress lines when output is not a "
                                   "terminal")
    resume: str = setting("", "--resume", group=AUTHORS, metavar="PATH",
                          help="checkpoint to continue from (ours, also one written mid-epoch "
                               "at an interrupt, or the authors' released files)")
    evaluate: bool = setting(False, "-e", "--evaluate", group=AUTHORS, action="store_true",
                             help="only evaluate the --resume checkpoint on the test set")

    time_steps: int = setting(100, "-T", "--time-steps", rule=_AT_LEAST_1,
                              help="time steps per image, train and test")
    leak: float = setting(0.99, "--leak", rule=("in (0, 1]", lambda v: 0 < v <= 1),
                          help="membrane leak per step, in (0, 1]")
    threshold: float = 1.0
    pool_threshold: float = 0.75
    input_scale: float = 1.0
    dropout: float = 0.0
    width: float = setting(1.0, "--width", rule=_POSITIVE,
                           help="channel multiplier of the network (1 = the paper's; for "
                                "quick tests)")
    milestones: tuple[int, ...] = field(default_factory=tuple)
    lr_gamma: float = 0.2
    test_batch_size: int = setting(64, "--test-batch-size", rule=_AT_LEAST_1,
                                   help="evaluation mini-batch size")
    crop_padding: int = 0
    horizontal_flip: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    extra_images: bool = setting(False, "--extra-images", "--svhn-extra", action="store_true",
                                 only_for=lambda info: info.extra is not None,
                                 help="train on the train split plus the data set's extra "
                                      "images (SVHN: 604k in all)")
    seed: int = setting(1, "--seed", rule=_AT_LEAST_0,
                        help="seed of all random draws (data order, dropout, spikes)")
    data_dir: str = setting("./data", "--data", metavar="DIR",
                            help="dataset directory (torchvision layout)")
    out_dir: str = setting("runs", "--out-dir", metavar="DIR",
                           help="where checkpoints and the metrics CSV are written")
    overwrite: bool = setting(False, "--overwrite", action="store_true",
                              help="start over even if --out-dir holds this run's checkpoints "
                                   "or CSV (they are replaced); without it such a run stops")
    download: bool = setting(True, "--no-download", action="store_false",
                             help="never download; stop with instructions if the data is "
                                  "missing")
    device: str = setting("auto", "--device", type=_device,
                          help="auto (CUDA if present), cpu, cuda, cuda:N")
    train_subset: int = setting(0, "--train-subset", metavar="N", rule=_AT_LEAST_0,
                                help="train on N images drawn once from --seed (0 = all); the "
                                     "test set stays whole")
    synthetic: bool = setting(False, "--synthetic", action="store_true",
                              help="train on a small deterministic in-memory data set (no files "
                                   "needed)")
    synthetic_size: int = setting(400, "--synthetic-size", rule=_AT_LEAST_1,
                                  help="training images of --synthetic (test: a quarter as many)")
    amp: bool = setting(False, "--amp", action="store_true",
                        help="mixed precision: convolutions and linear layers in bfloat16 "
                             "(float16 with a grad scaler on GPUs without bf16), spiking scans "
                             "in float32; also runs (bf16) on the CPU")
    time_chunk: int = setting(0, "--time-chunk", metavar="STEPS", rule=_AT_LEAST_0,
                              help="time steps the network runs at once; 0 = about 64 images' "
                                   "worth on the CPU (128 for LeNet), all T on a GPU (speed and "
                                   "memory only: the results are the same)")
    deterministic: bool = setting(False, "--deterministic", action="store_true",
                                  help="deterministic CUDA kernels (cuDNN, cuBLAS); slower")
    tf32: bool = setting(False, "--tf32", action="store_true",
                         help="TensorFloat-32 in CUDA matrix products and convolutions (faster, "
                              "10-bit mantissas); off by default: the paper's float32")
    sync_debug: bool = setting(False, "--sync-debug", action="store_true",
                               help="CUDA only, a check: stop at the first operation of a "
                                    "training step's forward, backward or update that makes "
                                    "the host wait for the GPU")
    save_every: float = setting(0.0, "--save-every", metavar="MINUTES", rule=_AT_LEAST_0,
                                what="--save-every",
                                help="also write a mid-epoch checkpoint every MINUTES of "
                                     "training (0 = only at epoch ends and on SIGINT/SIGTERM)")
    allow_silent: bool = setting(False, "--allow-silent", action="store_true",
                                 help="only warn, instead of stopping, when a layer that fired "
                                      "before emits no spike for a whole training epoch")
    export_nir: str = setting("", "--export-nir", metavar="PATH",
                              help="write the network (--resume's weights, else freshly "
                                   "initialised ones) as a NIR graph to PATH and exit: no data, "
                                   "no training (docs/nir.md)")
    nir_pool: str = setting("avg", "--nir-pool", choices=("avg", "sum"),
                            help="pooling in the --export-nir graph: avg (AvgPool2d) or sum "
                                 "(SumPool2d, the 1/4 folded into the next neuron's threshold, "
                                 "for toolchains without average pooling)")

    stats: bool = setting(False, "--stats", group=STATS, action="store_true",
                          help="count spikes and synaptic operations per layer in the test pass "
                               "(with --evaluate, else the last epoch's); print a table, write "
                               "spike_stats_<tag>.json and .png to --out-dir")
    mac_energy: float = setting(4.6, "--mac-energy", group=STATS, metavar="PJ", rule=_POSITIVE,
                                what="MAC energy",
                                help="pJ per multiply-accumulate of the equivalent ANN (45 nm "
                                     "32-bit float, Horowitz ISSCC 2014)")
    ac_energy: float = setting(0.9, "--ac-energy", group=STATS, metavar="PJ", rule=_POSITIVE,
                               what="AC energy", help="pJ per accumulate (addition) (same source)")
    raster_layer: str = setting("", "--raster-layer", group=STATS, metavar="NAME",
                                help="spiking layer whose spikes of the first test image "
                                     "--stats draws (input, lif1, pool1, ...; default: the "
                                     "first hidden layer)")


def _checked(kind: type, name: str, rule: tuple[str, Callable[[Any], bool]]) -> Callable:
    """An argparse ``type`` that converts to ``kind`` and enforces ``rule``."""
    phrase, ok = rule

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {phrase}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"{name} must be {phrase}, got {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


def build_parser(defaults: Experiment, description: str | None = None) -> argparse.ArgumentParser:
    """The command line of every field that has a flag; each default is ``defaults``' value."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {name: parser.add_argument_group(name) for name in (AUTHORS, OURS, STATS)}
    if defaults.dataset not in DATASETS:
        parser.error(f"unknown data set {defaults.dataset!r} in the script's Experiment; known: "
                     f"{', '.join(sorted(DATASETS))}")
    for f in fields(Experiment):
        meta = f.metadata
        if not meta or meta["only_for"] and not meta["only_for"](DATASETS[defaults.dataset]):
            continue
        options = dict(meta["options"])
        if callable(options.get("choices")):
            # a registry read now, not at import: a script may have registered more entries
            options["choices"] = options["choices"]()
        if meta["rule"] is not None:
            kind = options.pop("type", type(f.default))
            what = meta["what"] or f.name.replace("_", " ")
            options["type"] = _checked(kind, what, meta["rule"])
        quiet = "action" in options or f.default in (None, "")  # a switch, or nothing to show
        text = meta["help"] + ("" if quiet else " (default: %(default)s)")
        groups[meta["group"]].add_argument(*meta["flags"], dest=f.name,
                                           default=getattr(defaults, f.name), help=text,
                                           **options)
    return parser


def parse_settings(defaults: Experiment, argv: Sequence[str] | None = None,
                   description: str | None = None) -> Experiment:
    """``defaults`` with the command line ``argv`` (``sys.argv[1:]`` if None) applied; another
    architecture (``-a``) renames the outputs ``<dataset>_<arch>``, so that they never overwrite
    the script's own."""
    args = build_parser(defaults, description).parse_args(argv)
    settings = replace(defaults, **vars(args))
    if settings.arch != defaults.arch:
        settings = replace(settings, tag=f"{settings.dataset}_{settings.arch}")
    return settings
