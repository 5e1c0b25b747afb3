"""Writing a run's files safely: whole or not at all (a synced temporary file, then a rename), and
an output folder checked before any work is done."""
from __future__ import annotations

import os
import tempfile


def atomic_save(data: bytes, path: str) -> None:
    """Write ``data`` to ``path`` via a synced temporary file in the same directory and a rename,
    so ``path`` holds either the old or the new complete file, even after a crash."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    umask = os.umask(0)  # read by setting it, so set it back at once
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from the group
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_writable(directory: str) -> None:
    """Raise :class:`OSError` unless a file can be created in ``directory``. Folders made for the
    test are removed again, so a run that stops before writing anything leaves none behind."""
    missing, parent = [], os.path.abspath(directory)
    while not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    finally:
        for folder in missing:  # deepest first
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
