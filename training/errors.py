"""The one error the command line reports without a traceback."""
from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A problem the user can fix (bad checkpoint path, wrong architecture, missing data).

    The scripts print ``error: <message>`` on one line to stderr and exit with status 2, the
    status argparse uses for bad arguments, so every user mistake ends the same way.
    """
