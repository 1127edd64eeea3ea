"""A persistent request cache in SQLite, so that a re-run is free and an interrupted job resumes.

Use it by wrapping any backend: ``CachedBackend(inner, "cache.sqlite")`` (or ``--cache DB`` on the
command line, ``cache:`` in a config; see :func:`rlkd.backends.backend_from_config`). A request whose
answer is in the cache never reaches the inner backend and counts as ``cache_hits``, not ``calls``, in
the shared :class:`~rlkd.backends.BackendStats` (the wrapper and the inner backend share one ``stats``).

1. The key is a SHA-256 over the model name, the full messages (roles and contents) and every sampling
   setting (``max_tokens``, ``temperature``, ``top_p``, ``n``, ``seed``, ``stop``), so any change to the
   prompt or the settings is a miss. The server address and the API key are not part of the key: the
   same model behind another address answers from the same cache, and no key ever reaches the file.
2. The value is the completion texts and token counts. Failed completions are never stored: a re-run
   asks again. Nor are streams the caller stopped early (:meth:`CachedBackend.generate_stream`): their
   text is a prefix, and only complete answers may answer a request.
3. Sampled requests (``temperature > 0``) are cached too, with or without a seed. With a seed this is
   what the seed promises. Without one it freezes the first sample drawn: re-runs and resumed jobs are
   free and reproduce the earlier results, which is what data construction and evaluation want. When
   fresh samples are needed, vary the seed, ask for more ``n``, or pass
   ``sampled_without_seed=False`` (those requests then bypass the cache).
4. Identical requests within one batch are sent once.
5. The file is opened in WAL mode with a busy timeout, writes are short ``BEGIN IMMEDIATE`` transactions
   with ``INSERT OR IGNORE`` (the first answer stored for a key stays), and a lock serialises the threads
   of one process on its connection, so several threads and several processes can share one file.
   Answers are stored after each ``generate`` batch returns: a job killed mid-batch loses that batch only.
6. A corrupt cache (an SQLite file with garbage in its pages or schema) is detected when it is opened
   or read, reported on one line, moved aside to ``<file>.corrupt-<time>-<pid>`` and replaced by an
   empty cache, so the job goes on and asks again for what the cache held. A file that is not an SQLite
   database at all (notes, a JSON file), or another program's database, is refused and left alone. An entry that cannot be read back whole (texts that are not
   a list of strings, fewer texts than the request's ``n``, bad token counts) is never served: it is a
   miss, and the fresh answer is asked for.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

from rlkd.backends.base import Backend, Completion, GenerationRequest, StreamSink

log = logging.getLogger("rlkd.cache")

SCHEMA_VERSION = 1
_SQLITE_HEADER = b"SQLite format 3\x00"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    texts TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


def request_payload(model: str, request: GenerationRequest) -> dict:
    """What the cache key covers, as a JSON-ready dict (also stored beside the answer for auditing)."""
    return {
        "model": model,
        "messages": [[role, content] for role, content in request.messages],
        "max_tokens": int(request.max_tokens),
        "temperature": float(request.temperature),
        "top_p": float(request.top_p),
        "n": int(request.n),
        "seed": None if request.seed is None else int(request.seed),
        "stop": list(request.stop),
    }


def request_key(model: str, request: GenerationRequest) -> str:
    """SHA-256 hex digest over the model name, the messages and the sampling settings."""
    text = json.dumps(request_payload(model, request), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"rlkd-cache-v{SCHEMA_VERSION}\n{text}".encode("utf-8")).hexdigest()


class RequestCache:
    """The SQLite file: :meth:`get_many` and :meth:`put_many` by key. Safe across threads and processes."""

    def __init__(self, path: str | os.PathLike, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            raise OSError(f"{self.path}: is a folder, not a request cache file")
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None  # the file the connection opened (to move aside only that one)
        self.moved_aside: list[Path] = []
        self._retrying(self._open)

    def _open(self, recovering: bool = False) -> None:
        with open(self.path, "a+b") as handle:  # creates an empty file; reads the header of an existing one
            handle.seek(0)
            header = handle.read(16)
        if header and header != _SQLITE_HEADER:  # not a database at all: the user's file, never moved
            raise OSError(f"{self.path}: not a request cache (not an SQLite file); refusing to touch it: give "
                          "another cache file")
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise OSError(f"{self.path}: cannot open the request cache: {exc}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("%s: SQLite refused WAL mode (%s); concurrent writers will wait longer", self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "completions" not in tables:
                conn.close()
                raise OSError(f"{self.path}: an SQLite database but not a request cache (tables "
                              f"{', '.join(sorted(tables)[:5])}); refusing to change it: give another cache file")
            conn.execute(_SCHEMA)
            conn.execute("SELECT COUNT(*) FROM completions WHERE key = ''").fetchone()
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _is_lock_error(exc):
                raise
            if recovering:
                raise OSError(f"{self.path}: not a usable request cache: {exc}") from None
            self._move_aside(exc)
            return self._open(recovering=True)
        self._conn = conn
        stat = self.path.stat()
        self._inode = (stat.st_dev, stat.st_ino)

    def _move_aside(self, exc: BaseException) -> None:
        """Report a corrupt file on one line and rename it (with its -wal/-shm files) out of the way.

        Only the file this object opened is moved: when another process has already replaced it with a
        fresh cache, that one is left alone."""
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return
        if self._inode is not None and (stat.st_dev, stat.st_ino) != self._inode:
            return  # someone else already moved the corrupt file aside
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):
            extra = self.path.with_name(self.path.name + suffix)
            if extra.exists():
                if suffix == "-wal":
                    os.replace(extra, aside.with_name(aside.name + suffix))
                else:
                    extra.unlink()
        self.moved_aside.append(aside)
        self._inode = None
        log.warning("%s: the request cache is corrupt (%s); moved it aside to %s and started an empty one "
                    "(its answers will be asked again)", self.path, " ".join(str(exc).split()), aside.name)

    def _recover(self, exc: sqlite3.DatabaseError) -> None:
        """After a read or write found the file corrupt: move it aside and open a fresh one (callers hold
        self._lock)."""
        self._move_aside(exc)
        self._open(recovering=True)

    def _retrying(self, fn, *args):
        """Run ``fn`` again when SQLite reports a lock it could not wait out (bounded, with backoff)."""
        delay = 0.01
        for attempt in range(30):
            try:
                return fn(*args)
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc) or attempt == 29:
                    raise
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 1.0)

    def get_many(self, keys: Iterable[str]) -> dict[str, Completion]:
        """Cached completions for the keys that have one (flagged ``cached=True``)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, Completion] = {}
        for start in range(0, len(keys), 500):  # stay under SQLite's limit on bound parameters
            chunk = keys[start: start + 500]
            rows = self._retrying(self._select, chunk)
            for key, texts, prompt_tokens, completion_tokens in rows:
                completion = _whole_entry(texts, prompt_tokens, completion_tokens)
                if completion is None:
                    log.warning("%s: an unreadable entry (%s...) is not served; asking again", self.path, key[:12])
                    continue
                found[key] = completion
        return found

    def _select(self, keys: list[str]) -> list[tuple]:
        marks = ",".join("?" * len(keys))
        query = f"SELECT key, texts, prompt_tokens, completion_tokens FROM completions WHERE key IN ({marks})"
        with self._lock:
            conn = self._connection()
            try:
                return conn.execute(query, keys).fetchall()
            except sqlite3.DatabaseError as exc:
                if _is_lock_error(exc):
                    raise
                self._recover(exc)
                return []  # the fresh cache holds nothing: every key is a miss

    def put_many(self, items: Iterable[tuple[str, str, GenerationRequest, Completion]]) -> int:
        """Store ``(key, model, request, completion)`` items; failed completions are skipped.
        Returns the number of rows written (a key already present keeps its first answer)."""
        now = time.time()
        rows = [
            (key, model, json.dumps(request_payload(model, request), ensure_ascii=False),
             json.dumps(completion.texts, ensure_ascii=False), completion.prompt_tokens,
             completion.completion_tokens, now)
            for key, model, request, completion in items
            if completion.error is None
        ]
        if not rows:
            return 0
        return self._retrying(self._insert, rows)

    def _insert(self, rows: list[tuple], retried: bool = False) -> int:
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    before = conn.total_changes
                    conn.executemany("INSERT OR IGNORE INTO completions VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                    written = conn.total_changes - before
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return written
            except sqlite3.DatabaseError as exc:
                if _is_lock_error(exc) or retried:
                    raise
                self._recover(exc)
        return self._insert(rows, retried=True)

    def __len__(self) -> int:
        with self._lock:
            return int(self._connection().execute("SELECT COUNT(*) FROM completions").fetchone()[0])

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:  # closed earlier: open again (callers hold self._lock)
            self._open()
        assert self._conn is not None
        return self._conn

    def close(self) -> None:
        """Close the connection; a later call opens it again."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"RequestCache({str(self.path)!r})"


class CachedBackend(Backend):
    """Answer from the cache at ``cache`` (a path or a :class:`RequestCache`) when it can, else from ``inner``.

    Cache hits skip ``inner`` entirely and count as ``stats.cache_hits``; ``stats`` is the inner
    backend's own counters object, so calls, tokens, retries and failures of the misses stay in one place.
    """

    name = "cached"

    def __init__(self, inner: Backend, cache: str | os.PathLike | RequestCache, *,
                 sampled_without_seed: bool = True) -> None:
        super().__init__()
        self.inner = inner
        self.cache = cache if isinstance(cache, RequestCache) else RequestCache(cache)
        self.sampled_without_seed = sampled_without_seed
        self.stats = inner.stats
        self.model = inner.model
        self.name = f"cached {inner.name}"

    def __repr__(self) -> str:
        return f"CachedBackend({self.inner!r}, {str(self.cache.path)!r})"

    def cacheable(self, request: GenerationRequest) -> bool:
        """Whether this request may be answered from and stored in the cache."""
        return self.sampled_without_seed or request.temperature == 0 or request.seed is not None

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """One completion per request, in order: cached ones flagged ``cached=True``, the rest from ``inner``."""
        requests = list(requests)
        if not requests:
            return []
        keys = [request_key(self.model, r) if self.cacheable(r) else None for r in requests]
        cacheable_keys = [k for k in keys if k is not None]
        hits = await asyncio.to_thread(self.cache.get_many, cacheable_keys) if cacheable_keys else {}
        for key, request in zip(keys, requests):  # an entry with fewer samples than asked for is not whole
            if key in hits and len(hits[key].texts) != request.n:
                del hits[key]

        to_send: list[int] = []  # indices of requests that go to the inner backend
        first_of_key: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key is None:
                to_send.append(i)
            elif key not in hits and key not in first_of_key:
                first_of_key[key] = i
                to_send.append(i)
        fresh = await self.inner.generate([requests[i] for i in to_send]) if to_send else []
        answered = dict(zip(to_send, fresh))
        store = [(keys[i], self.model, requests[i], c) for i, c in answered.items() if keys[i] is not None]
        if store:
            try:
                await asyncio.to_thread(self.cache.put_many, store)
            except (sqlite3.Error, OSError) as exc:
                log.warning("%s: could not store %d answers in the cache: %s", self.cache.path, len(store), exc)

        results: list[Completion] = []
        for i, key in enumerate(keys):
            if i in answered:
                results.append(answered[i])
            elif key in hits:
                self.stats.cache_hits += 1
                results.append(_copy(hits[key]))
            else:  # a duplicate of a request sent in this batch
                original = answered[first_of_key[key]]
                if original.ok:
                    self.stats.cache_hits += 1
                    results.append(_copy(original, cached=True))
                else:
                    results.append(_copy(original))
        return results

    async def generate_stream(self, requests: Sequence[GenerationRequest], sinks: Sequence[StreamSink]) -> list[Completion]:
        """Streamed requests: a cached answer is fed whole; the rest stream from ``inner``. Only
        complete answers are stored: a stream the caller stopped early holds a prefix, which must never
        answer a later request that wants the whole text, so it is not cached."""
        requests = list(requests)
        keys = [request_key(self.model, r) if self.cacheable(r) else None for r in requests]
        cacheable_keys = [k for k in keys if k is not None]
        hits = await asyncio.to_thread(self.cache.get_many, cacheable_keys) if cacheable_keys else {}
        results: list[Completion | None] = [None] * len(requests)
        for i, key in enumerate(keys):
            if key in hits:
                self.stats.cache_hits += 1
                results[i] = _copy(hits[key])
                sinks[i].feed(results[i].text)
                sinks[i].finish(results[i])
        to_send = [i for i in range(len(requests)) if results[i] is None]
        fresh = await self.inner.generate_stream([requests[i] for i in to_send], [sinks[i] for i in to_send]) \
            if to_send else []
        store = []
        for i, completion in zip(to_send, fresh):
            results[i] = completion
            if keys[i] is not None and completion.ok and not completion.stopped:
                store.append((keys[i], self.model, requests[i], completion))
        if store:
            try:
                await asyncio.to_thread(self.cache.put_many, store)
            except (sqlite3.Error, OSError) as exc:
                log.warning("%s: could not store %d answers in the cache: %s", self.cache.path, len(store), exc)
        return results  # type: ignore[return-value]

    async def aclose(self) -> None:
        """Close the inner backend and the cache file."""
        await self.inner.aclose()
        self.cache.close()


def _is_lock_error(exc: BaseException) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _whole_entry(texts: object, prompt_tokens: object, completion_tokens: object) -> Completion | None:
    """The completion a row stores, or None when the row cannot be read back whole."""
    try:
        values = json.loads(texts) if isinstance(texts, str) else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(values, list) or not values or not all(isinstance(t, str) for t in values):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt_tokens, completion_tokens)):
        return None
    return Completion(texts=values, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cached=True)


def _copy(completion: Completion, cached: bool | None = None) -> Completion:
    return Completion(texts=list(completion.texts), prompt_tokens=completion.prompt_tokens,
                      completion_tokens=completion.completion_tokens, error=completion.error,
                      cached=completion.cached if cached is None else cached)
