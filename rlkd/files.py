"""File safety for every command that writes: never truncate or replace a file rlkd did not write.

Every output goes through the helpers here, so the rules hold the same way everywhere:

1. :func:`check_output_path`: before any paid call, the output's folder exists or can be made, is
   writable, and the output is not a folder; ``same_as`` refuses an output that is one of the inputs.
2. :func:`refuse_foreign_jsonl` and :func:`refuse_foreign_page`: an existing file that is not this
   command's format (a notes file, a JSON config, a binary, someone else's page) is refused with a
   one-line error naming it, before anything is written; an empty file is fine.
3. :func:`atomic_write_text`: a page or JSON document is written to a temporary file in the same folder,
   flushed to disk, then renamed over the target, so a crash or an error mid-render leaves the old file
   whole.
4. :class:`OutputLock`: an exclusive, non-blocking ``fcntl.flock`` on the sidecar ``<output>.lock``,
   held for the whole run, so a second process writing the same output is refused at once instead of
   duplicating records. The kernel drops the lock when the holder exits, even by ``kill -9``, so a
   resumed run is never locked out. The sidecar file is left in place (removing it would race with a
   process opening it).

Failures raise :class:`OutputRefused` (the command line prints its message on one line, exit status 2).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

try:  # POSIX; elsewhere the lock is a no-op
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class OutputRefused(Exception):
    """An output this command must not write: not its format, a folder, unwritable, or in use."""


def check_output_path(path: str | os.PathLike, what: str = "output", same_as: Sequence[str | os.PathLike] = ()) -> Path:
    """Check that ``path`` can be written (before any paid call); returns it as a Path.

    The path must not be a folder nor one of ``same_as`` (the command's inputs); its folder must exist
    and be writable, or be creatable under a writable existing folder.
    """
    target = Path(path)
    if target.is_dir():
        raise OutputRefused(f"{what} {target}: is a folder; give a file name")
    for other in same_as:
        if other and Path(other).exists() and target.exists() and os.path.samefile(target, other):
            raise OutputRefused(f"{what} {target}: is also an input of this command; write to another file")
    folder = target.parent
    ancestor = folder
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputRefused(f"{what} {target}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputRefused(f"{what} {target}: cannot write in {ancestor} (permission denied)")
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputRefused(f"{what} {target}: the file is not writable (permission denied)")
    return target


def refuse_foreign_jsonl(path: str | os.PathLike, fields: Sequence[str], writer: str) -> None:
    """Refuse an existing non-empty ``path`` whose first line is not a JSON object with ``fields``.

    ``writer`` names the command whose format is expected (for the message), e.g. ``rlkd score``.
    """
    target = Path(path)
    if not target.is_file() or target.stat().st_size == 0:
        return
    with open(target, "rb") as handle:
        first = b""
        for raw in handle:
            if raw.strip():
                first = raw
                break
    if not first:
        return
    why = _record_problem(first, fields)
    if why:
        raise OutputRefused(f"{target}: exists and is not a file {writer} writes (line 1: {why}); refusing to "
                            "replace or append to it: move it away or choose another output")


def _record_problem(raw: bytes, fields: Sequence[str]) -> str | None:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except (ValueError, RecursionError):
        return "not a JSON record"
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not a record"
    missing = [f for f in fields if f not in obj]
    if missing:
        return f"no field {', '.join(map(repr, missing))}"
    return None


def refuse_foreign_page(path: str | os.PathLike, markers: Sequence[str], writer: str) -> None:
    """Refuse an existing non-empty ``path`` whose first 4 KB hold none of ``markers``."""
    target = Path(path)
    if not target.is_file() or target.stat().st_size == 0:
        return
    with open(target, "rb") as handle:
        head = handle.read(4096).decode("utf-8", errors="replace")
    if not any(marker in head for marker in markers):
        raise OutputRefused(f"{target}: exists and is not a page {writer} writes; refusing to replace it: move it "
                            "away or choose another file")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` all at once: a temporary file in the same folder, fsync, rename.

    The folder is created if needed. On any error the temporary file is removed and ``path`` is unchanged.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class OutputLock:
    """Hold an exclusive lock on ``<path>.lock`` for one writer of ``path`` (use in a ``with``).

    Raises :class:`OutputRefused` at once, naming the holder's process id, when another process holds it.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "out.jsonl"
    >>> with OutputLock(out):
    ...     try:
    ...         OutputLock(out).acquire()
    ...     except OutputRefused:
    ...         print("refused: a second writer")
    refused: a second writer
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.name or self.path.is_dir():
            raise OutputRefused(f"{self.path}: is a folder; give a file name")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._handle = None

    def acquire(self) -> "OutputLock":
        """Take the lock or raise :class:`OutputRefused`."""
        if fcntl is None:  # pragma: no cover - no flock on this platform
            return self
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise OutputRefused(f"{self.path}: another rlkd process (pid {holder}) is writing it; wait for it to "
                                "finish or choose another output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        """Drop the lock (closing the file releases it)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
