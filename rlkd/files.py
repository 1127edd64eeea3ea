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

5. :func:`atomic_write_jsonl`: a whole JSONL file written the same way (:func:`atomic_write_text`).
6. :func:`read_text` and :func:`iter_jsonl`: inputs read as UTF-8, a bad file or line an
   :class:`~rlkd.errors.InputError` naming the file and line.
7. :func:`read_done_ids` and :class:`JsonlWriter`: the resumable outputs of ``rlkd decompose``, ``rlkd data``
   and ``rlkd score --completions``: one whole record a line, appended and flushed at once; a rerun reads
   the ids already done and cuts off the torn last line a kill may leave.

Failures raise :class:`OutputRefused` or :class:`~rlkd.errors.InputError` (both :class:`~rlkd.errors.RlkdError`:
the command line prints the message on one line, exit status 2). This module knows nothing of the method.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from rlkd.errors import InputError, RlkdError

try:  # POSIX; elsewhere the lock is a no-op
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("rlkd")


class OutputRefused(RlkdError):
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


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
    """Write ``records`` as a whole JSONL file (one JSON object a line) with :func:`atomic_write_text`."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


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


# --------------------------------------------------------------------------------------------------
# Reading inputs


def read_text(path: str | os.PathLike, what: str = "file", error: type[RlkdError] = InputError,
              hint: str = "", dash_is_stdin: bool = True) -> str:
    """Read a file as UTF-8 (``-`` is standard input unless ``dash_is_stdin`` is false). A missing file, a
    folder or text that is not UTF-8 raises ``error`` naming the file (``what`` says what it should be,
    ``hint`` follows the UTF-8 error)."""
    if dash_is_stdin and str(path) == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {what}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}){hint}") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a bad line raises InputError naming it."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a JSONL file") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{path}:{number}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            except RecursionError:
                raise InputError(f"{path}:{number}: JSON nested too deeply to read") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
            yield number, obj


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for error messages (``null``, ``number``, ``list``, ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {"str": "text", "dict": "an object", "list": "a list"}.get(type(value).__name__, type(value).__name__)



# --------------------------------------------------------------------------------------------------
# Resumable JSONL outputs: the loop of rlkd decompose, rlkd data gsrm and rlkd data rlkd


def id_key(value: Any) -> str:
    """The key an id is compared by when resuming (the id as canonical JSON, so ``1`` and ``"1"`` differ)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def read_done_ids(*paths: Path | str, fields: Mapping[str, Sequence[str]] | None = None,
                  statuses: dict[str, int] | None = None) -> set[str]:
    """Ids already written to any of ``paths`` (a missing file has none), as :func:`id_key` keys.

    Records are written one whole line at a time, so a run killed mid-write leaves at most a torn
    last line without its newline: that line is cut off the file (and its item is redone). Any other
    unreadable line is an error naming the line; nothing is changed then. A file that is not this
    command's output (its first line is not a JSON record with an ``id`` and the ``fields`` named for
    that path, e.g. notes, a JSON config or a binary) is refused with an error before anything is
    changed, whether or not it ends in a newline. ``statuses``, when given, counts the records' ``status``.
    """
    done: set[str] = set()
    for path in paths:
        wanted = ("id", *((fields or {}).get(str(path), ())))
        _read_ids(Path(path), done, wanted, statuses)
    return done


_RECORD_START = b'{"id": '  # how every record JsonlWriter writes begins (json.dumps of a dict led by its id)


def _read_ids(path: Path, done: set[str], fields: Sequence[str] = ("id",),
              statuses: dict[str, int] | None = None) -> None:
    if not path.exists():
        return
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an output file")
    pieces = path.read_bytes().split(b"\n")  # the last piece is what follows the final newline ('' normally)
    position = 0
    records = 0
    for number, raw in enumerate(pieces, start=1):
        last = number == len(pieces)
        if raw.strip():
            try:
                obj = json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict) or "id" not in obj:
                    raise ValueError("not an object with an 'id'")
                missing = [f for f in fields if f not in obj]
                if missing:
                    raise ValueError(f"no field {', '.join(map(repr, missing))}")
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                torn = last and (records > 0 or raw.startswith(_RECORD_START))
                if not records and not torn:  # not a file rlkd wrote: never truncate or append to it
                    raise InputError(f"{path}: exists and is not an output of this command (line {number}: "
                                   f"{_short_reason(exc)}); refusing to change it: move it away or choose "
                                   "another output") from None
                if not last:
                    raise InputError(f"{path}:{number}: unreadable line in the output file ({_short_reason(exc)}); "
                                   "fix or remove it, then run again") from None
                log.warning("%s:%d: dropping the torn last line of an interrupted run", path, number)
                with open(path, "r+b") as handle:
                    handle.truncate(position)
                return
            records += 1
            done.add(id_key(obj["id"]))
            if statuses is not None:
                status = str(obj.get("status"))
                statuses[status] = statuses.get(status, 0) + 1
            if last:  # a whole record that lost only its newline
                with open(path, "ab") as handle:
                    handle.write(b"\n")
        position += len(raw) + 1


def _short_reason(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    text = " ".join(str(exc).split())
    return text if len(text) <= 120 else text[:117] + "..."


class JsonlWriter:
    """Append JSON records to named files, one whole line per write, flushed at once, so a killed run
    leaves at most a torn last line (which :func:`read_done_ids` cuts off). Use it in a ``with``.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with JsonlWriter(output=folder / "out.jsonl") as out:
    ...     out.write("output", {"id": 1})
    >>> (folder / "out.jsonl").read_text()
    '{"id": 1}\\n'
    """

    def __init__(self, **paths: Path | str) -> None:
        self.handles = {}
        for name, path in paths.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.handles[name] = open(path, "a", encoding="utf-8")

    def write(self, name: str, record: Mapping[str, Any]) -> None:
        """Append ``record`` to the file named ``name`` and flush."""
        handle = self.handles[name]
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()

    def close(self) -> None:
        """Close every file."""
        for handle in self.handles.values():
            handle.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
