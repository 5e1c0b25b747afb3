"""An experiment's settings: one dataclass the entry scripts fill in and the engine reads."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Experiment"]


@dataclass(frozen=True)
class Experiment:
    """Everything one training or evaluation run needs; the command line overrides fields.

    The defaults here are neutral; each entry script (``mnist_LeNet.py`` and friends) sets the
    values of its published run (SPEC section 9).

    Attributes:
        tag: names the outputs: ``checkpointT1_<tag>.pth.tar``, ``model_bestT1_<tag>.pth.tar``,
            ``metrics_<tag>.csv``.
        dataset: ``mnist``, ``cifar10`` or ``svhn``.
        arch: network name for :func:`models.get_model`.
        time_steps: T, the steps every image is presented for (train and test).
        leak: l of every LIF neuron and of the output integrator, in (0, 1].
        threshold / pool_threshold: firing thresholds of hidden LIF and pooling neurons.
        input_scale: a of the Poisson encoder (0.5 MNIST, 1 otherwise).
        dropout: p of the time-held dropout after hidden LIF layers (LeNet has none).
        width: channel multiplier of the network (1 = the paper's; tests use narrow nets).
        lr, momentum, weight_decay: plain SGD (the authors' runs had momentum 0).
        milestones, lr_gamma: the learning rate is multiplied by ``lr_gamma`` at the start of
            every 0-based epoch index listed in ``milestones`` (cumulative).
        epochs: total number of epochs; ``start_epoch`` overrides where training starts.
        batch_size / test_batch_size: mini-batch sizes for training and evaluation.
        crop_padding: RandomCrop(H, padding) when > 0; ``horizontal_flip``: RandomHorizontalFlip.
        mean / std: per-channel Normalize after ToTensor; ``None`` for no normalisation.
        svhn_extra: train SVHN on train + extra (604k images) instead of train (73k).
        seed: seeds Python, NumPy and torch; also the fixed seed of every evaluation's encoder.
        workers: DataLoader worker processes; ``print_freq``: batches between plain progress lines.
        data_dir / out_dir: where datasets live and where checkpoints and the CSV go.
        download: try to download a missing dataset; ``False`` fails at once with instructions.
        device: ``auto`` (CUDA if present), ``cpu``, ``cuda``, ``cuda:1``, ...
        train_subset: train on this many images (a fixed random subset drawn from ``seed``)
            instead of the whole training set; 0 = all. The test set is always complete.
        synthetic: use the in-memory synthetic data set of ``synthetic_size`` training images.
        resume: checkpoint to load; ``evaluate``: only test it.
        stats: count spikes and synaptic operations per layer in the test pass (the evaluation,
            or the last epoch's) and write ``spike_stats_<tag>.json`` / ``.png`` (issue 5).
        mac_energy / ac_energy: pJ per multiply-accumulate / accumulate for the energy estimate
            (45 nm CMOS, 32-bit float: Horowitz, ISSCC 2014).
        raster_layer: spiking layer whose spikes of the first test image are drawn as a raster
            (``input``, ``lif1``, ``pool1``, ...); empty = the first hidden layer.
        amp: autocast the synapses (bf16, or fp16 with a grad scaler on GPUs without bf16);
            the spiking scans stay float32.
        time_chunk: time steps the network runs at once (``SpikingNetwork.time_chunk``);
            0 = its default. Changes speed and memory, not results.
        deterministic: deterministic cuDNN/cuBLAS kernels (CUDA); the CPU is deterministic
            already with ``workers`` 0.
    """

    tag: str
    dataset: str
    arch: str
    time_steps: int = 100
    leak: float = 0.99
    threshold: float = 1.0
    pool_threshold: float = 0.75
    input_scale: float = 1.0
    dropout: float = 0.0
    width: float = 1.0
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = field(default_factory=tuple)
    lr_gamma: float = 0.2
    epochs: int = 1
    start_epoch: int | None = None
    batch_size: int = 64
    test_batch_size: int = 64
    crop_padding: int = 0
    horizontal_flip: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    svhn_extra: bool = False
    seed: int = 1
    workers: int = 2
    print_freq: int = 10
    data_dir: str = "./data"
    out_dir: str = "runs"
    download: bool = True
    device: str = "auto"
    train_subset: int = 0
    synthetic: bool = False
    synthetic_size: int = 400
    resume: str = ""
    evaluate: bool = False
    stats: bool = False
    mac_energy: float = 4.6
    ac_energy: float = 0.9
    raster_layer: str = ""
    amp: bool = False
    time_chunk: int = 0
    deterministic: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain, ``weights_only``-loadable copy (strings, numbers, tuples) for checkpoints."""
        return asdict(self)
