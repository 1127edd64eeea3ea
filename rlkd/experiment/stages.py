"""Stages of a demo run: timed, logged, recorded in ``stages.json`` and skipped when their outputs are
there (:class:`Stages`), and the summary of their times (:func:`stage_times`)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from rlkd.files import atomic_write_text

from rlkd.experiment.recipe import DONE_FILE, STAGES_FILE

log = logging.getLogger("rlkd.experiment")

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
    def mark_done(folder: Path, **info: Any) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / DONE_FILE).write_text(json.dumps(info) + "\n", encoding="utf-8")

    @contextlib.contextmanager
    def stage(self, name: str, done_folder: Path | None = None, kind: str = "other") -> Iterator[bool]:
        """Run a stage (yields True) or skip it (yields False) when ``done_folder`` is marked done;
        ``kind`` groups stages in the printed time summary."""
        self.count += 1
        prefix = f"[{self.count}/{self.total}] {name}"
        if done_folder is not None and self.is_done(done_folder):
            log.info("%s: done before, skipped (%s)", prefix, done_folder)
            self.records.setdefault(name, {"seconds": 0.0})
            self.records[name].update(skipped=True, kind=kind)
            self._write()
            yield False
            return
        log.info("%s ...", prefix)
        t0 = time.monotonic()
        yield True
        seconds = time.monotonic() - t0
        if done_folder is not None:
            self.mark_done(done_folder, stage=name, seconds=round(seconds, 2))
        self.records[name] = {"seconds": round(seconds, 2), "skipped": False, "kind": kind}
        self._write()
        elapsed = time.monotonic() - self.started
        log.info("%s: %.1f s (run so far %s)", prefix, seconds, _clock(elapsed))

    def _write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.records, indent=2) + "\n")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"




# --------------------------------------------------------------------------------------------------
# rlkd demo


def stage_times(stages: Mapping[str, Mapping[str, Any]]) -> str:
    """Measured seconds per kind of stage (summed over seeds), in the order the stages ran."""
    totals: dict[str, float] = {}
    skipped = 0
    for record in stages.values():
        if record.get("skipped"):
            skipped += 1
            continue
        kind = record.get("kind", "other")
        totals[kind] = totals.get(kind, 0.0) + float(record.get("seconds", 0.0))
    text = "stage times: " + ", ".join(f"{kind} {seconds:.0f} s" for kind, seconds in totals.items())
    return text + (f" ({skipped} stages done before, skipped)" if skipped else "")
