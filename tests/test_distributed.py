"""DDP under torchrun on the CPU (gloo): 2 processes train the LeNet script's settings on
synthetic data; their weights must be identical and equal one process on the same global batch.

What is compared, and why the tolerance:
- ``-b 8`` is the global batch: each of the 2 ranks trains on 4 images per step. The
  DistributedSampler gives both ranks the same permutation and rank r every second index, so the
  two ranks' batch k together is exactly the single process's batch k.
- Randomness is made to agree: LeNet has no dropout, and the worker runs the encoder with a
  scale of 1e6, which fires exactly at the non-zero pixels (no dependence on the per-rank draws).
- Each rank scales its summed loss by the world size; DDP's average of the ranks' gradients is
  then the gradient of the authors' sum over all 8 images. The only difference left is the order
  of floating-point additions (a sum of 8 against two sums of 4 added by all-reduce, and
  convolutions over batches of 4 instead of 8), a few float32 ulps per step: after 4 SGD steps
  the weights agree to ~1e-6, far below the changes training makes (asserted as well). One
  caveat makes the seed matter: spikes are discrete, so a membrane potential within rounding of
  its threshold can fire in one run and not in the other, and that step's gradient then differs
  by far more than rounding. Seed 1 of this tiny configuration has such a coincidence in its
  last step (differences ~1e-4); seed 2 has none, so the test uses it. With seed 2 the weights
  agree to 5e-7; the tolerance 1e-5 leaves room for other BLAS builds.
- The two ranks hold bit-identical weights (DDP applies the same averaged gradient everywhere).
- ``--evaluate`` under DDP shards the test set without repeats and averages over all images: both
  ranks report the single process's loss, accuracy and image count.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training import run
from training.checkpoint import load_checkpoint
from training.engine import build_model, seed_everything
from training.experiment import parse_settings

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import mnist_LeNet  # noqa: E402

try:
    from tests.ddp_worker import DETERMINISTIC_SCALE
except ImportError:  # pragma: no cover
    from ddp_worker import DETERMINISTIC_SCALE

ARGS = ["--synthetic", "--synthetic-size", "32", "--width", "0.5", "-T", "8", "--epochs", "1",
        "-b", "8", "--test-batch-size", "8", "-j", "0", "-p", "1000", "--seed", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Launch 2 gloo ranks with torchrun (loopback only, bounded time); return dumps and output."""
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(REPO / "tests" / "ddp_worker.py"),
               str(tmp), *ARGS, "--out-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, text=True, capture_output=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return ranks, out, result.stdout


def test_two_ranks_match_each_other_and_one_process(ddp_run, tmp_path):
    (rank0, rank1), out, stdout = ddp_run
    for key, value in rank0["weights"].items():
        assert torch.equal(value, rank1["weights"][key]), key

    settings = replace(parse_settings(mnist_LeNet.EXPERIMENT, [*ARGS, "--out-dir", str(tmp_path)]),
                       input_scale=DETERMINISTIC_SCALE)
    single = run(settings)
    seed_everything(settings.seed)
    initial = build_model(settings).state_dict()
    for key, value in single.model.state_dict().items():
        ddp = rank0["weights"][key]
        assert torch.allclose(ddp, value, rtol=0, atol=1e-5), (key, (ddp - value).abs().max())
        assert (value - initial[key]).abs().max() > 1e-3, key  # training did move the weights

    history = single.history[0]
    for name in ("train_loss", "train_top1", "test_loss", "test_top1"):
        assert rank0["history"][0][name] == pytest.approx(history[name], abs=1e-4), name
    # --evaluate under DDP: every test image once, averaged over both ranks
    assert rank0["evaluate"] == rank1["evaluate"]
    loss, top1, samples = rank0["evaluate"]
    assert samples == single.test.samples == 10
    assert loss == pytest.approx(single.test.loss, abs=1e-5) and top1 == single.test.top1


def test_rank0_alone_prints_and_writes_checkpoints_with_the_authors_keys(ddp_run):
    _, out, stdout = ddp_run
    assert stdout.count("Epoch 1/1 | lr") == 1 and "DDP over 2 processes (gloo)" in stdout
    assert sorted(os.listdir(out)) == ["checkpointT1_mnist_lenet_synthetic.pth.tar",
                                       "curves_mnist_lenet_synthetic.png",
                                       "metrics_mnist_lenet_synthetic.csv",
                                       "model_bestT1_mnist_lenet_synthetic.pth.tar"]
    checkpoint = load_checkpoint(str(out / "checkpointT1_mnist_lenet_synthetic.pth.tar"))
    # read the raw file: load_checkpoint would hide a 'module.' prefix
    raw = torch.load(out / "checkpointT1_mnist_lenet_synthetic.pth.tar", weights_only=True)
    assert list(raw["state_dict"]) == ["cnn1.weight", "cnn2.weight", "fc0.weight", "fc1.weight"]
    assert checkpoint["epoch"] == 1


def test_stats_under_ddp_count_both_ranks_images(ddp_run, tmp_path):
    # ddp_worker evaluated the trained checkpoint with --stats on 2 ranks; with deterministic
    # spikes the merged counts are those of one process over the whole test set
    _, out, _ = ddp_run
    name = "spike_stats_mnist_lenet_synthetic.json"
    ddp = json.loads((out.parent / "stats" / name).read_text())
    settings = replace(parse_settings(mnist_LeNet.EXPERIMENT, [*ARGS, "--out-dir", str(tmp_path)]),
                       input_scale=DETERMINISTIC_SCALE, evaluate=True, stats=True,
                       resume=str(out / "checkpointT1_mnist_lenet_synthetic.pth.tar"))
    run(settings)
    single = json.loads((tmp_path / name).read_text())
    assert ddp["images"] == single["images"] == 10 and ddp["output"]["images"] == 10
    for key in ("layers", "totals", "output", "raster"):
        assert ddp[key] == single[key], key


def test_global_batch_must_divide_over_the_ranks(monkeypatch):
    from training import UsageError
    from training.distributed import per_rank_batch

    assert per_rank_batch(64, 4) == 16
    with pytest.raises(UsageError, match="-b/--batch-size 10 is the global batch and must be "
                                         "divisible by the 4 processes"):
        per_rank_batch(10, 4)
