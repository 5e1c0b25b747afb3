"""The authors' command line (pytorch/examples imagenet style) plus this project's flags.

Every flag's default comes from the script's :class:`~training.experiment.Experiment`, so
``python cifar10_ResNet11.py`` alone reproduces the published run and each flag changes one
setting. Out-of-range values are rejected by the parser itself (exit status 2).
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from models import MODELS

from .experiment import Experiment

__all__ = ["build_parser", "parse_settings"]


def _number(kind: type, name: str, ok: Callable[[float], bool],
            rule: str) -> Callable[[str], float]:
    """An argparse ``type`` that converts to ``kind`` and enforces ``ok`` (message: ``rule``)."""

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {rule}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"{name} must be {rule}, got {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


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


def build_parser(defaults: Experiment, description: str | None = None) -> argparse.ArgumentParser:
    """The shared parser; every default is the matching field of ``defaults``."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    at_least_1 = ("at least 1", lambda v: v >= 1)
    at_least_0 = ("at least 0", lambda v: v >= 0)
    positive = ("positive", lambda v: v > 0)

    def integer(name: str, rule: tuple[str, Callable]) -> Callable[[str], int]:
        return _number(int, name, rule[1], rule[0])

    def real(name: str, rule: tuple[str, Callable]) -> Callable[[str], float]:
        return _number(float, name, rule[1], rule[0])

    def shown(text: str) -> str:
        return f"{text} (default: %(default)s)"

    authors = p.add_argument_group("the authors' flags")
    authors.add_argument("-a", "--arch", type=str.lower, choices=sorted(MODELS),
                         default=defaults.arch, help=shown("network architecture"))
    authors.add_argument("-j", "--workers", type=integer("workers", at_least_0),
                         default=defaults.workers, help=shown("data loading worker processes"))
    authors.add_argument("--epochs", type=integer("epochs", at_least_1), default=defaults.epochs,
                         help=shown("total number of epochs"))
    authors.add_argument("--start-epoch", type=integer("start epoch", at_least_0),
                         default=defaults.start_epoch,
                         help="epoch index to start at (default: 0, or the resumed checkpoint's)")
    authors.add_argument("-b", "--batch-size", type=integer("batch size", at_least_1),
                         default=defaults.batch_size,
                         help=shown("global training mini-batch size, split evenly over "
                                    "torchrun's processes"))
    authors.add_argument("--lr", "--learning-rate", dest="lr", type=real("learning rate", positive),
                         default=defaults.lr, help=shown("initial learning rate"))
    authors.add_argument("--momentum", type=real("momentum", at_least_0),
                         default=defaults.momentum,
                         help="SGD momentum (default: %(default)s; the authors' scripts parsed it "
                              "but never used it)")
    authors.add_argument("--wd", "--weight-decay", dest="weight_decay",
                         type=real("weight decay", at_least_0), default=defaults.weight_decay,
                         help=shown("SGD weight decay"))
    authors.add_argument("-p", "--print-freq", type=integer("print frequency", at_least_1),
                         default=defaults.print_freq,
                         help=shown("batches between progress lines when output is not a terminal"))
    authors.add_argument("--resume", metavar="PATH", default=defaults.resume,
                         help="checkpoint to continue from (ours or the authors' released files)")
    authors.add_argument("-e", "--evaluate", action="store_true", default=defaults.evaluate,
                         help="only evaluate the --resume checkpoint on the test set")

    ours = p.add_argument_group("this project's flags")
    ours.add_argument("-T", "--time-steps", type=integer("time steps", at_least_1),
                      default=defaults.time_steps,
                      help=shown("time steps per image, train and test"))
    ours.add_argument("--leak", type=real("leak", ("in (0, 1]", lambda v: 0 < v <= 1)),
                      default=defaults.leak, help=shown("membrane leak per step, in (0, 1]"))
    ours.add_argument("--test-batch-size", type=integer("test batch size", at_least_1),
                      default=defaults.test_batch_size, help=shown("evaluation mini-batch size"))
    ours.add_argument("--data", dest="data_dir", metavar="DIR", default=defaults.data_dir,
                      help=shown("dataset directory (torchvision layout)"))
    ours.add_argument("--no-download", dest="download", action="store_false",
                      default=defaults.download,
                      help="never download; stop with instructions if the data is missing")
    ours.add_argument("--device", type=_device, default=defaults.device,
                      help=shown("auto (CUDA if present), cpu, cuda, cuda:N"))
    ours.add_argument("--seed", type=integer("seed", at_least_0), default=defaults.seed,
                      help=shown("seed of all random draws (data order, dropout, spikes)"))
    ours.add_argument("--out-dir", metavar="DIR", default=defaults.out_dir,
                      help=shown("where checkpoints and the metrics CSV are written"))
    ours.add_argument("--train-subset", metavar="N", type=integer("train subset", at_least_0),
                      default=defaults.train_subset,
                      help=shown("train on N images drawn once from --seed (0 = all); the test "
                                 "set stays whole"))
    ours.add_argument("--width", type=real("width", positive), default=defaults.width,
                      help=shown("channel multiplier of the network (1 = the paper's; for quick "
                                 "tests)"))
    ours.add_argument("--synthetic", action="store_true", default=defaults.synthetic,
                      help="train on a small deterministic in-memory data set (no files needed)")
    ours.add_argument("--synthetic-size", type=integer("synthetic size", at_least_1),
                      default=defaults.synthetic_size,
                      help=shown("training images of --synthetic (test: a quarter as many)"))
    ours.add_argument("--amp", action="store_true", default=defaults.amp,
                      help="mixed precision: convolutions and linear layers in bfloat16 (float16 "
                           "with a grad scaler on GPUs without bf16), spiking scans in float32; "
                           "also runs (bf16) on the CPU")
    ours.add_argument("--time-chunk", metavar="STEPS", type=integer("time chunk", at_least_0),
                      default=defaults.time_chunk,
                      help=shown("time steps the network runs at once; 0 = about 64 images' "
                                 "worth on the CPU (128 for LeNet), all T on a GPU (speed and "
                                 "memory only: the results are the same)"))
    ours.add_argument("--deterministic", action="store_true", default=defaults.deterministic,
                      help="deterministic CUDA kernels (cuDNN, cuBLAS); slower")
    if defaults.dataset == "svhn":
        ours.add_argument("--svhn-extra", action="store_true", default=defaults.svhn_extra,
                          help="train on SVHN train + extra (604k images)")

    stats = p.add_argument_group("spike statistics")
    stats.add_argument("--stats", action="store_true", default=defaults.stats,
                       help="count spikes and synaptic operations per layer in the test pass "
                            "(with --evaluate, else the last epoch's); print a table, write "
                            "spike_stats_<tag>.json and .png to --out-dir")
    stats.add_argument("--mac-energy", metavar="PJ", type=real("MAC energy", positive),
                       default=defaults.mac_energy,
                       help="pJ per multiply-accumulate of the equivalent ANN (default: "
                            "%(default)s, 45 nm 32-bit float, Horowitz ISSCC 2014)")
    stats.add_argument("--ac-energy", metavar="PJ", type=real("AC energy", positive),
                       default=defaults.ac_energy,
                       help="pJ per accumulate (addition) (default: %(default)s, same source)")
    stats.add_argument("--raster-layer", metavar="NAME", default=defaults.raster_layer,
                       help="spiking layer whose spikes of the first test image --stats draws "
                            "(input, lif1, pool1, ...; default: the first hidden layer)")
    return p


def parse_settings(defaults: Experiment, argv: Sequence[str] | None = None,
                   description: str | None = None) -> Experiment:
    """Apply the command line ``argv`` (``sys.argv[1:]`` if None) to ``defaults``.

    Choosing another architecture with ``-a`` renames the outputs to ``<dataset>_<arch>`` so
    they never overwrite the script's own checkpoints.
    """
    args = build_parser(defaults, description).parse_args(argv)
    settings = replace(defaults, **vars(args))
    if settings.arch != defaults.arch:
        settings = replace(settings, tag=f"{settings.dataset}_{settings.arch}")
    return settings
