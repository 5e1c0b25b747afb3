"""A scan kernel as the emitters see it: a one-step :class:`~.program.Program` and how its inputs
and outputs are laid out in memory over the steps of a chunk and the neurons of a layer.

Every array is contiguous: ``[steps, neurons]`` for what changes from step to step, ``[neurons]``
for what belongs to a neuron. The kernel walks each block of neurons through all steps
(backwards in time for a gradient), so that what a neuron carries from step to step (its
membrane, its statistics, its gradient) stays in the L1 cache or in registers.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .program import Program

__all__ = ["FIRST", "Kernel", "NEURONS", "NUMBER", "ROWS", "ROWS_BEFORE", "STATE", "SUM", "Slot"]

ROWS = "rows"                # [steps, neurons]: row t read and/or written at step t
ROWS_BEFORE = "rows_before"  # [steps, neurons]: row t - 1 read at step t (row 0 at t = 0)
STATE = "state"              # [neurons]: read at a step, written back for the next
NEURONS = "neurons"          # [neurons]: read at every step
NUMBER = "number"            # one number for every neuron and step
SUM = "sum"                  # [neurons]: the output's sum over the steps
FIRST = "first"              # no array: whether the step is the chunk's first (t = 0)


@dataclass(frozen=True)
class Slot:
    """One argument of a kernel: the array ``array`` (or number) holding program input
    ``input`` and/or receiving program output ``output``; ``boolean``: an array of bytes
    (``torch.bool``), else of the scan's dtype. Two slots may name one array (the kept
    potentials, read at step t and at step t - 1)."""

    kind: str
    array: str = ""
    input: str | None = None
    output: str | None = None
    boolean: bool = False


@dataclass
class Kernel:
    """A program over ``[steps, neurons]``: its slots in argument order (``FIRST`` takes none),
    walked from the first step to the last, or the reverse for a gradient."""

    name: str
    program: Program
    slots: tuple[Slot, ...]
    reverse: bool = False

    def arrays(self) -> tuple[Slot, ...]:
        """The slots that take an array argument, in order."""
        return tuple(slot for slot in self.slots if slot.kind != FIRST)

    @cached_property
    def array_names(self) -> tuple[str, ...]:
        """The arrays of the slots that take an array argument, in argument order (computed
        once: the host reads it at every launch)."""
        return tuple(slot.array for slot in self.arrays())

    @cached_property
    def operand_inputs(self) -> frozenset[str]:
        """The program inputs computed on the host from the neuron's tensors
        (``<method>:<k>``)."""
        return frozenset(slot.input for slot in self.slots if slot.input and ":" in slot.input)
