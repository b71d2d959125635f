"""Atomic file output: write to a temporary file beside the target, then rename.

An interrupted run never leaves a truncated file under the final name: the
rename is atomic on POSIX filesystems, and on failure the temporary is removed.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output", "check_writable"]


@contextmanager
def atomic_output(path: str | Path):
    """Yield a temporary path in `path`'s folder; on success it replaces `path`."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    os.close(descriptor)
    try:
        yield Path(temporary)
        # The usual mode of a new file, not mkstemp's private 0600: outputs are shared.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def check_writable(path: str | Path) -> Path:
    """Fail early, with one line, if `path` cannot be written (before any heavy work)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a directory")
    if not folder.is_dir():
        raise ValueError(f"cannot write {path}: folder {folder} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".rsf-write-check-"):
            pass
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror or error}") from None
    return path
