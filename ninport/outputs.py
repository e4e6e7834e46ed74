"""Output paths that never touch an input, and files that appear whole or not at all.

Every command that writes checks all its output paths against all its input files first (real paths and
inodes, so symlinks and hard links count), then writes each file to a temporary name beside it and renames.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from ninport.errors import OutputError

# Pseudo file systems: writing there is never a model file (and /proc writes can do harm).
_SPECIAL = ("/proc", "/sys", "/dev")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


# Input files of the commands running in this process: no atomic write may replace one of them.
_PROTECTED: list[tuple[str, tuple[int, int] | None, str]] = []


@contextmanager
def protecting(inputs: Iterable[str | os.PathLike | None]) -> Iterator[None]:
    """While the block runs, every ``atomic_write_bytes`` and ``publish`` refuses to replace one of ``inputs``
    (by real path or inode): a net that names its own weights as a snapshot cannot overwrite them."""
    entries = [(os.path.realpath(os.fspath(p)), _identity(os.fspath(p)), os.fspath(p)) for p in inputs
               if p is not None]
    _PROTECTED.extend(entries)
    try:
        yield
    finally:
        for entry in entries:
            _PROTECTED.remove(entry)


def _guard(path: str) -> None:
    if not _PROTECTED:
        return
    real, ident = os.path.realpath(path), _identity(path)
    for p_real, p_ident, name in _PROTECTED:
        if real == p_real or (ident is not None and ident == p_ident):
            raise OutputError(f"{path}: this output would overwrite the input {name}; choose another path")


def check_outputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse, in one line and before any work, output paths that would overwrite an input file (by real path
    or by inode), that name an existing directory, repeat one another, or cannot be written where they are."""
    ins = [os.fspath(p) for p in inputs if p is not None]
    in_real = {os.path.realpath(p): p for p in ins}
    in_ids = {ident: p for p in ins if (ident := _identity(p)) is not None}
    seen: dict[str, str] = {}
    for out in (os.fspath(p) for p in outputs):
        real = os.path.realpath(out)
        clash = in_real.get(real) or in_ids.get(_identity(out))  # type: ignore[arg-type]
        if clash is not None:
            raise OutputError(f"{out}: this output would overwrite the input {clash}; choose another path")
        if real in seen:
            raise OutputError(f"{out}: the same file as the output {seen[real]}; choose another name")
        seen[real] = out
        if any(real == s or real.startswith(s + "/") for s in _SPECIAL):
            raise OutputError(f"{out}: {real} is in a pseudo file system, not a place for an output file")
        if os.path.isdir(out):
            raise OutputError(f"{out}: is a directory; give the output a file name, such as "
                              f"{os.path.join(out, 'model.onnx')}")
        if os.path.exists(out) and not os.path.isfile(out):
            raise OutputError(f"{out}: exists and is not a regular file; ninport replaces only regular files")
        check_folder(os.path.dirname(out) or ".", out)


def check_folder(folder: str, out: str | None = None) -> None:
    """The nearest existing ancestor of ``folder`` must be a writable directory (missing ones are created)."""
    what = out or folder
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise OutputError(f"{what}: cannot write here, {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{what}: cannot write here, the directory {probe} is not writable")


def make_folder(folder: str) -> None:
    try:
        os.makedirs(folder or ".", exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the output directory ({exc.strerror or exc})") from None


def temp_path(path: str | os.PathLike, suffix: str = "") -> str:
    """A new, empty, hidden file beside ``path`` (same directory, so the final rename is atomic)."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)[:100]}.", suffix=f".ninport-tmp{suffix}",
                                   dir=folder)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the output gets the usual permissions
    except OSError:
        pass
    return tmp


_UMASK: list[int] = []


def _umask() -> int:
    if not _UMASK:
        current = os.umask(0o022)
        os.umask(current)
        _UMASK.append(current)
    return _UMASK[0]


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: str, path: str | os.PathLike) -> None:
    """Make a finished temporary file ``tmp`` the file ``path``: flushed to disk, then renamed over it."""
    path = os.fspath(path)
    _guard(path)
    try:
        fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        remove_quietly(tmp)
        raise OutputError(f"{path}: cannot write the file ({exc.strerror or exc})") from None


def remove_quietly(*paths: str | None) -> None:
    for p in paths:
        if p:
            try:
                os.unlink(p)
            except OSError:
                pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file whole or not at all: a temporary name beside it, fsync, then a rename."""
    path = os.fspath(path)
    _guard(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the file ({exc.strerror or exc})") from None
    finally:
        remove_quietly(tmp if os.path.exists(tmp) else None)
