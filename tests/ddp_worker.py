"""One rank of the DDP test (tests/test_distributed.py), launched by torchrun.

Usage: ``python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py DUMP_DIR ARGS...``
where ARGS are mnist_LeNet.py's flags. It trains as the script does (same parser, same engine),
then evaluates the checkpoint rank 0 wrote with ``--resume ... --evaluate``, and dumps this
rank's final weights and both passes' metrics to ``DUMP_DIR/rank<R>.pt`` for the test to compare.

The only change to the script's settings is the encoder's scale (see ``DETERMINISTIC_SCALE``).
With ``DDP_WORKER_STOP_AT_STEP=S`` in the environment, rank 0 sends itself SIGTERM after step S
of the first epoch, and the worker exits with the engine's interrupt status after its checkpoint.
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mnist_LeNet  # noqa: E402
from training import Interrupted, run  # noqa: E402
from training.checkpoint import checkpoint_paths, run_tag  # noqa: E402
from training.distributed import cleanup  # noqa: E402
from training.experiment import parse_settings  # noqa: E402

# Poisson spikes are drawn per rank, so 2 ranks x 4 images and 1 process x 8 images draw
# different uniforms. With |scale * x| > U and U in [0, 1), a scale of 1e6 fires exactly where
# a pixel is non-zero: the encoder becomes deterministic and the comparison with one process
# tests the gradient arithmetic, not the luck of the draws.
DETERMINISTIC_SCALE = 1e6


def stats(result) -> list[float]:
    return [result.test.loss, result.test.top1, result.test.samples]


def main() -> None:
    dump, argv = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    settings = replace(parse_settings(mnist_LeNet.EXPERIMENT, argv),
                       input_scale=DETERMINISTIC_SCALE)
    stop_at = int(os.environ.get("DDP_WORKER_STOP_AT_STEP") or 0)

    def terminate(epoch: int, step: int) -> None:
        if os.environ["RANK"] == "0" and (epoch, step) == (0, stop_at):
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        trained = run(settings, after_step=terminate if stop_at else None)
    except Interrupted as interrupt:
        cleanup()
        sys.exit(interrupt.status)
    last, _ = checkpoint_paths(settings.out_dir, run_tag(settings))
    evaluated = run(replace(settings, resume=last, evaluate=True, stats=True,
                            out_dir=str(dump / "stats")))
    torch.save({"weights": trained.model.state_dict(), "history": trained.history,
                "evaluate": stats(evaluated), "train_test": stats(trained)},
               dump / f"rank{os.environ['RANK']}.pt")
    cleanup()


if __name__ == "__main__":
    main()
