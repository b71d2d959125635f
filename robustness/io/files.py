"""Safe file output: checked before any work, written atomically, never over what it must not replace.

:func:`check_writable` refuses, with one line and before anything heavy runs,
an output path that is a symbolic link (whatever it points to), that exists
and is not a regular file (a device such as ``/dev/full``, a FIFO, a socket,
a folder), that is one of the command's own inputs (by path or by inode: a
hard link or another spelling of the same file), or whose folder is missing
(created only when asked, ``--mkdir``). :func:`atomic_output` writes to a
temporary file beside the target and renames it over the target only when
complete, re-checking at that moment that the target is still a regular
file or absent, so an interrupted run never leaves a truncated file and a
link planted meanwhile is not followed.
"""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output", "check_not_input", "check_writable"]


def _refusal(path: Path) -> str | None:
    """Why `path` may not be written over, or ``None`` (absent, or a regular file)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        return error.strerror or str(error)
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link (write to its target's own path if that is meant)"
    if stat.S_ISDIR(info.st_mode):
        return "it is a directory"
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a character device" if stat.S_ISCHR(info.st_mode)
            else "a block device" if stat.S_ISBLK(info.st_mode)
            else "a FIFO" if stat.S_ISFIFO(info.st_mode)
            else "a socket" if stat.S_ISSOCK(info.st_mode)
            else "not a regular file"
        )  # fmt: skip
        return f"it is {kind}, not a regular file"
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_not_input(path: str | Path, inputs=()) -> None:
    """Refuse `path` when it is (or is the same file as) one of `inputs`."""
    for source in inputs:
        if source is not None and _same_file(Path(path), Path(source)):
            raise ValueError(f"cannot write {path}: it is an input of this command ({source})")


def check_writable(path: str | Path, *, inputs=(), mkdir: bool = False) -> Path:
    """Fail early, with one line, if `path` may not or cannot be written (before any heavy work).

    `inputs` are the command's input files: the output may be none of them.
    With `mkdir` the missing parent folders are created; otherwise a missing
    folder is an error that says how to ask for it.
    """
    path = Path(path)
    if str(path) in ("", "."):
        raise ValueError("an output path is needed")
    reason = _refusal(path)
    if reason:
        raise ValueError(f"cannot write {path}: {reason}")
    check_not_input(path, inputs)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        if folder.exists():
            raise ValueError(f"cannot write {path}: {folder} is not a folder")
        if not mkdir:
            raise ValueError(
                f"cannot write {path}: folder {folder} does not exist (create it, or pass --mkdir)"
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"cannot create {folder}: {error.strerror or error}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".rsf-write-check-"):
            pass
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror or error}") from None
    return path


@contextmanager
def atomic_output(path: str | Path):
    """Yield a temporary path in `path`'s folder; on success it replaces `path`.

    The target is checked again just before the rename: what became a link,
    a device or a folder meanwhile is left alone (the write fails, one line).
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    os.close(descriptor)
    try:
        yield Path(temporary)
        reason = _refusal(path)
        if reason:
            raise ValueError(f"cannot write {path}: {reason}")
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
