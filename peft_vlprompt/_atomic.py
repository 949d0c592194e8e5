"""Complete-or-absent file writes, with the permissions a plain `open()`/`mkdir()` would give.

`tempfile.mkstemp`/`mkdtemp` create 0600 files and 0700 folders; once renamed into place those modes stay, and a
shared `runs/` becomes unreadable to others. Temp names here are created with `O_EXCL` (files) or `os.mkdir`
(folders) and the process umask applies, as for any other file the run writes.

Every byte the training checkpoints and final saves write goes through `write_file` (tests inject faults there).
"""

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def temp_name(folder: str | os.PathLike, prefix: str, suffix: str = "") -> Path:
    """A fresh, unused-looking path `folder/<prefix><random><suffix>` (nothing is created)."""
    return Path(folder) / f"{prefix}{secrets.token_hex(6)}{suffix}"


def make_temp_dir(folder: str | os.PathLike, prefix: str) -> Path:
    """Create and return a new empty folder `folder/<prefix><random>` (mode 0777 minus the umask)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    while True:
        path = temp_name(folder, prefix)
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in `path` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    try:  # Linux >= 4.7 reports it without changing it (the os.umask round trip races with other threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_mode(path: str | os.PathLike) -> None:
    """Give a file another library wrote the mode a plain `open()` would (safetensors' `save_file` makes 0600)."""
    os.chmod(path, 0o666 & ~_umask())


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file another library wrote to the disk before a rename publishes it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str | os.PathLike, data: bytes) -> None:
    """Create `path` (it must not exist), write `data` and fsync it; an `OSError` (e.g. a full disk) names `path`."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, f"{e.strerror} (writing {len(data)} bytes)", str(path)) from e


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, then `os.replace` it onto `path`: readers see all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path.parent, f".{path.name}.", ".tmp")
    try:
        write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
