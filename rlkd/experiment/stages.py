"""Stages of a demo run: timed, logged, recorded in ``stages.json`` and skipped when their outputs are
there (:class:`Stages`); a plan of stages with their dependencies run in order or by worker processes
side by side (:class:`Work`, :func:`run_plan`); and the summary of their times (:func:`stage_times`)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from rlkd.files import atomic_write_text

from rlkd.experiment.recipe import DONE_FILE, STAGES_FILE

log = logging.getLogger("rlkd.experiment")


@functools.cache
def code_fingerprint() -> str:
    """A short hash of the installed rlkd package's source (its ``.py`` files and prompts), stored in every
    done marker so that a resumed run can tell outputs that other code made."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".txt") and "__pycache__" not in path.parts:
            digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]

# --------------------------------------------------------------------------------------------------
# Stages: timing, logging and skipping what is done


class Stages:
    """Times every stage, logs it, and records it in ``stages.json``; ``done(path)`` marks an output
    folder complete so that a re-run skips the stage."""

    def __init__(self, root: Path, total: int, fresh: bool = False) -> None:
        self.root = root
        self.path = root / STAGES_FILE
        self.total = total
        self.count = 0
        self.started = time.monotonic()
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists() and not fresh:
            try:
                self.records = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError:
                log.warning("%s: unreadable, stage times start over", self.path)

    @staticmethod
    def is_done(folder: Path) -> bool:
        return (folder / DONE_FILE).is_file()

    @staticmethod
    def done_info(folder: Path) -> dict[str, Any]:
        """What the done marker of ``folder`` records (empty when it is unreadable)."""
        try:
            info = json.loads((folder / DONE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    @staticmethod
    def mark_done(folder: Path, **info: Any) -> None:
        """Mark ``folder`` complete, recording ``info`` and the code that made it (:func:`code_fingerprint`)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / DONE_FILE).write_text(json.dumps({**info, "code": code_fingerprint()}) + "\n", encoding="utf-8")

    @contextlib.contextmanager
    def stage(self, name: str, done_folder: Path | None = None, kind: str = "other") -> Iterator[bool]:
        """Run a stage (yields True) or skip it (yields False) when ``done_folder`` is marked done;
        ``kind`` groups stages in the printed time summary."""
        prefix = self.begin(name, done_folder, kind)
        if prefix is None:
            yield False
            return
        t0 = time.monotonic()
        yield True
        self.end(prefix, name, done_folder, kind, time.monotonic() - t0)

    def begin(self, name: str, done_folder: Path | None = None, kind: str = "other", note: str = "") -> str | None:
        """Number and log a stage that starts; None (logged, recorded as skipped) when it is done before,
        else the prefix :meth:`end` logs it with."""
        self.count += 1
        prefix = f"[{self.count}/{self.total}] {name}"
        if done_folder is not None and self.is_done(done_folder):
            log.info("%s: done before, skipped (%s)", prefix, done_folder)
            made_by = self.done_info(done_folder).get("code")
            if made_by != code_fingerprint():
                log.warning("%s: its outputs were made by other rlkd code (source %s, now %s) and are kept; "
                            "run with --fresh to make them again", prefix, made_by or "unrecorded",
                            code_fingerprint())
            self.records.setdefault(name, {"seconds": 0.0})
            self.records[name].update(skipped=True, kind=kind)
            self._write()
            return None
        log.info("%s ...%s", prefix, note)
        return prefix

    def end(self, prefix: str, name: str, done_folder: Path | None, kind: str, seconds: float) -> None:
        """Record a finished stage: mark its folder done, write its time to ``stages.json``, log it."""
        if done_folder is not None:
            self.mark_done(done_folder, stage=name, seconds=round(seconds, 2))
        self.records[name] = {"seconds": round(seconds, 2), "skipped": False, "kind": kind}
        self._write()
        elapsed = time.monotonic() - self.started
        log.info("%s: %.1f s (run so far %s)", prefix, seconds, clock(elapsed))

    def _write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.records, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# A plan of stages, run in order or side by side


@dataclass(frozen=True)
class Work:
    """One stage of a plan: its logged ``name``, the folder that marks it done (None: always run), its
    ``kind`` (for the time summary), the keys of the stages it needs finished first, and the ``action``
    (a picklable tuple) that the runner executes."""

    key: str
    name: str
    done: Path | None
    kind: str
    action: tuple[Any, ...]
    needs: tuple[str, ...] = ()


def run_plan(stages: Stages, plan: Sequence[Work], runner: Callable[[tuple[Any, ...]], None], *,
             workers: int = 1, threads: int = 0, worker_setup: Callable[..., Callable[[tuple[Any, ...]], None]] |
             None = None, setup_args: tuple[Any, ...] = (), logs: Path | None = None,
             heartbeat: float = 60.0) -> None:
    """Run every stage of ``plan`` that is not done before.

    ``workers == 1``: in this process, in plan order, with ``runner(action)`` (the plan must list each
    stage after the stages it needs). ``workers > 1``: that many spawned worker processes, each built once
    by ``worker_setup(*setup_args)`` (which returns its runner) with ``threads`` torch threads (0: torch's
    default); a stage starts as soon as a worker is free and the stages it needs are finished, in plan
    order. A worker's output (its logs, TRL's, the progress bars) goes to ``logs/<key>.log``; this
    process logs each stage's start and end, and every ``heartbeat`` seconds without one, which stages
    are running and for how long. When a stage fails, the stages running beside it finish (and are
    kept), no other starts, and the failure is raised.
    """
    keys = {w.key for w in plan}
    for w in plan:
        missing = [n for n in w.needs if n not in keys]
        if missing:
            raise ValueError(f"stage {w.key} needs {missing}, which the plan does not have")
    if workers <= 1:
        with _torch_threads(threads):
            for w in plan:
                with stages.stage(w.name, w.done, w.kind) as todo:
                    if todo:
                        runner(w.action)
        return
    if worker_setup is None or logs is None:
        raise ValueError("run_plan: workers > 1 needs worker_setup and logs")
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    logs.mkdir(parents=True, exist_ok=True)
    pending = list(plan)
    finished: set[str] = set()
    before = 0  # stages done by an earlier run, skipped here
    running: dict[Future, tuple[Work, str, Path, float]] = {}
    failure: BaseException | None = None
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(worker_setup, setup_args, threads, log.getEffectiveLevel())) as pool, \
            _workers_stopped_on_interrupt(pool):
        while pending or running:
            while failure is None and len(running) < workers:
                ready = next((w for w in pending if all(n in finished for n in w.needs)), None)
                if ready is None:
                    break
                pending.remove(ready)
                log_file = logs / (ready.key.replace("/", "-") + ".log")
                prefix = stages.begin(ready.name, ready.done, ready.kind, note=f" (log: {log_file})")
                if prefix is None:
                    finished.add(ready.key)
                    before += 1
                    continue
                future = pool.submit(_work_in_worker, ready.action, str(log_file))
                running[future] = (ready, prefix, log_file, time.monotonic())
            if not running:
                if failure is not None or not pending:
                    break
                raise RuntimeError(f"run_plan: stages {[w.key for w in pending]} wait on stages that never run")
            done, _ = wait(running, timeout=heartbeat, return_when=FIRST_COMPLETED)
            if not done:
                now = time.monotonic()
                earlier = f", {before} of them by an earlier run" if before else ""
                log.info("running: %s; %d of %d stages finished%s (run so far %s)",
                         ", ".join(f"{w.name} ({clock(now - t0)})" for w, _, _, t0 in running.values()),
                         len(finished), len(plan), earlier, clock(now - stages.started))
            for future in done:
                work, prefix, log_file, _ = running.pop(future)
                try:
                    seconds = future.result()
                except BaseException as exc:  # noqa: BLE001 - re-raised below, once the others finished
                    log.error("%s: failed (%s: %s); its log: %s", prefix, type(exc).__name__, exc, log_file)
                    if running:
                        log.error("waiting for the %d stage(s) still running, so that their work is kept",
                                  len(running))
                    failure = failure or exc
                    continue
                stages.end(prefix, work.name, work.done, work.kind, seconds)
                finished.add(work.key)
    if failure is not None:
        raise failure


@contextlib.contextmanager
def _workers_stopped_on_interrupt(pool: Any) -> Iterator[None]:
    """On Ctrl-C (or anything else that ends the run early), stop ``pool``'s worker processes at once
    rather than wait for the stages they run (a worker started by a background job ignores SIGINT);
    what finished before stays marked done, what they ran does not."""
    try:
        yield
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        raise


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` torch threads (0: as they are), then restore the count."""
    if threads <= 0:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_RUNNER: Callable[[tuple[Any, ...]], None] | None = None


def _start_worker(setup: Callable[..., Callable[[tuple[Any, ...]], None]], args: tuple[Any, ...], threads: int,
                  level: int) -> None:
    """A worker process's start: its torch threads, rlkd's log level, and its runner."""
    global _RUNNER
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_MININTERVAL", "5")  # the bars go to a log file: a line every 5 s is enough
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rlkd").setLevel(level)
    _RUNNER = setup(*args)


def _work_in_worker(action: tuple[Any, ...], log_file: str) -> float:
    """Run one stage in a worker with its output (file descriptors 1 and 2) in ``log_file``; its seconds."""
    assert _RUNNER is not None, "worker not started"
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "a", encoding="utf-8") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            t0 = time.monotonic()
            _RUNNER(action)
            return time.monotonic() - t0
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def clock(seconds: float) -> str:
    """Seconds as minutes and seconds, the way the demo's logs write wall times.

    >>> clock(605.4)
    '10:05'
    """
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


# --------------------------------------------------------------------------------------------------
# rlkd demo


def stage_times(stages: Mapping[str, Mapping[str, Any]], workers: int = 1) -> str:
    """Measured seconds per kind of stage (summed over seeds), in the order the stages ran; ``workers``:
    how many ran side by side (their times then add up to more than the wall time)."""
    totals: dict[str, float] = {}
    skipped = 0
    for record in stages.values():
        if record.get("skipped"):
            skipped += 1
            continue
        kind = record.get("kind", "other")
        totals[kind] = totals.get(kind, 0.0) + float(record.get("seconds", 0.0))
    text = "stage times: " + ", ".join(f"{kind} {seconds:.0f} s" for kind, seconds in totals.items())
    text += f" ({skipped} stages done before, skipped)" if skipped else ""
    return text + (f"; {workers} workers side by side, so these add up to more than the wall time"
                   if workers > 1 else "")
