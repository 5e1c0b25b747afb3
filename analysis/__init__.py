"""Analysis of trained spiking networks, outside the training core: :mod:`analysis.monitor`
counts spikes and synaptic operations during inference (``--stats``), :mod:`analysis.report`
turns the counts into a per-image summary, table and JSON, :mod:`analysis.plots` draws it and a
run's per-epoch curves."""
from .monitor import SpikeMonitor, spiking_layer_names
from .report import format_table, summarize, write_json, write_report

__all__ = ["SpikeMonitor", "format_table", "spiking_layer_names", "summarize", "write_json",
           "write_report"]
