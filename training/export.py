"""``--export-nir PATH``: a checkpoint's network (or a freshly initialised one) written as a NIR
graph, without data and without training (docs/nir.md)."""
from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch

from models import SpikingNetwork

from .checkpoint import atomic_save, load_checkpoint, load_weights
from .experiment import Experiment, UsageError

__all__ = ["export_nir", "input_description"]


def input_description(settings: Experiment) -> dict[str, Any]:
    """What feeds the graph's input node: the Poisson encoder stays outside the graph."""
    if settings.mean is None:
        image = "the image as ToTensor gives it (values in [0, 1], no normalisation)"
    else:
        image = (f"the image ToTensor'd, then normalised per channel by mean "
                 f"{list(settings.mean)}, std {list(settings.std)}")
    return {"input": f"signed Bernoulli rate code, a fresh draw at every step: x_t = sign(x) * "
                     f"[|{settings.input_scale:g} * x| > U(0, 1)], x = {image}",
            "input_scale": float(settings.input_scale), "dataset": settings.dataset}


def _load(settings: Experiment, model: SpikingNetwork) -> tuple[str, int]:
    """The ``--resume`` checkpoint's weights into ``model``; returns where they came from and
    the T they were trained with."""
    checkpoint = load_checkpoint(settings.resume)
    load_weights(model, checkpoint, settings.arch, settings.resume, settings.dataset)
    trained = checkpoint.get("settings", {})
    time_steps = trained.get("time_steps") if isinstance(trained, dict) else None
    return (f"checkpoint {settings.resume} (epoch {checkpoint.get('epoch', '?')})",
            int(time_steps or settings.time_steps))


def export_nir(settings: Experiment,
               build_model: Callable[[Experiment], SpikingNetwork]) -> SpikingNetwork:
    """Write ``settings.arch`` (``--resume``'s weights, else those a training run with
    ``--seed`` starts from) as a NIR graph to ``settings.export_nir``, atomically; return the
    network.

    Raises:
        UsageError: unreadable or unfitting checkpoint, a path that cannot be written.
    """
    import nir  # here, not at the top: training runs without the nir package
    from models.nir_graph import DT, export_graph

    torch.manual_seed(settings.seed)  # a training run seeds, then builds: the same weights
    model = build_model(settings).cpu().eval()
    if settings.resume:
        weights, time_steps = _load(settings, model)
    else:
        weights, time_steps = f"freshly initialised (seed {settings.seed})", settings.time_steps
    metadata = {**input_description(settings), "time_steps": time_steps, "weights": weights,
                "arch": settings.arch, "width": float(settings.width)}
    try:
        graph = export_graph(model, settings.nir_pool, metadata)
    except ValueError as error:
        raise UsageError(f"cannot export {settings.arch} to NIR: {error}") from None
    buffer = io.BytesIO()
    nir.write(buffer, graph)
    path = settings.export_nir
    try:
        atomic_save(buffer.getvalue(), path)
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror or error}") from None
    if not settings.resume:
        print(f"note: no --resume: exporting freshly initialised weights (seed {settings.seed})")
    print(f"wrote {path}: {settings.arch} as a NIR graph ({len(graph.nodes)} nodes, "
          f"{len(graph.edges)} edges, {settings.nir_pool} pooling, dt = {DT:g} s per step, "
          f"trained T = {time_steps}), weights: {weights}", flush=True)
    return model
