"""Run directory ownership: RUN/.lock, held by the one process that trains into RUN.

The lock is an flock(LOCK_EX | LOCK_NB) on an open descriptor of RUN/.lock, kept for the life of
the run; the file holds the holder's PID for the refusal message. The OS drops the lock when its
holder dies (even with SIGKILL), so a stale file is simply taken over. Where flock is missing or
unsupported (e.g. some network file systems), the recorded PID decides: a live process other than
this one holds the run. Release removes the file (while still locked) and closes the descriptor.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path

from genlab.errors import GenlabError

try:
    import fcntl
except ImportError:  # not POSIX: the recorded PID alone decides
    fcntl = None

LOCK_FILE = ".lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _flock(fd: int, shared: bool = False) -> bool | None:
    """True: taken; False: another open file holds it; None: flock unavailable here.
    shared: a probe (holder()) that does not stop another probe."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in _NO_FLOCK:
            return None
        raise


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or "x")
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    """The locked descriptor is still the file at `path` (a releasing holder may have removed it)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def in_use_error(run: Path, pid: int | None) -> GenlabError:
    who = f"genlab process {pid}" if pid else "another genlab process"
    return GenlabError(f"{run} is in use by {who} ({Path(run) / LOCK_FILE}); wait for it to finish or stop it")


class RunLock:
    """An acquired lock on a run directory; `release()` (idempotent) gives it up."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, run: Path) -> RunLock:
        """Take RUN/.lock (RUN must exist) or raise the one-line in-use error naming the holder."""
        path = Path(run) / LOCK_FILE
        try:
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                got = _flock(fd)
                if got is True and not _same_file(fd, path):
                    os.close(fd)  # the holder removed it as we opened it: try the new file
                    continue
                holder = _holder_pid(fd, got)
                if holder is not None:
                    os.close(fd)
                    raise in_use_error(run, holder or None)
                return cls._claim(path, fd)
        except OSError as e:
            raise GenlabError(f"cannot lock {path}: {e.strerror or e}") from None

    @classmethod
    def _claim(cls, path: Path, fd: int) -> RunLock:
        """Write this PID into the file we hold; say so if a dead process left its own."""
        old = _read_pid(fd)
        if old and old != os.getpid():
            print(
                f"genlab: note: {path} was left by process {old}, which is no longer running; taking over",
                file=sys.stderr,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink()
        except OSError:
            pass  # the lock itself ends with the descriptor
        os.close(self._fd)
        self._fd = None


def _holder_pid(fd: int, got: bool | None) -> int | None:
    """None if we may take the lock, else the holder's PID (0 if it has not written it yet)."""
    if got is True:
        return None
    pid = _read_pid(fd)
    if got is False:
        if pid is None:  # the holder is between flock and writing its PID
            time.sleep(0.1)
            pid = _read_pid(fd)
        return pid or 0
    return pid if pid and pid != os.getpid() and _alive(pid) else None  # no flock: trust the PID


def holder(run: Path) -> int | None:
    """Without taking it: the PID holding RUN/.lock (0 if unknown), or None if the run is free."""
    path = Path(run) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return _holder_pid(fd, _flock(fd, shared=True))
    finally:
        os.close(fd)  # closing drops the probe's own lock, if it got one
