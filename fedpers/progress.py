"""Progress of a long command: one display per stage, with the time spent and an estimate of the time left.

A run is a sequence of stages (``round 2/3 · training (SecAgg+)``, ``round 2/3 · evaluation``). On a
terminal the current stage is one live line (tqdm), redrawn every second: its steps (e.g. the SecAgg+
exchanges, the users evaluated), how many of the step's replies arrived, the elapsed time, and the
estimates of the time left in the stage and in the run. Elsewhere (a log file, CI) each stage writes
one line when it ends, and nothing else.

Estimates come from the stages already done: a stage takes as long, per unit of ``weight``, as the
last stage of the same ``kind`` (the first round also starts the simulated devices, so the latest is
the better guide). Before any, the current step's rate (seconds per reply) gives the time left in
that step. The run's time left adds the estimates of the stages still planned
(:meth:`Progress.plan`); it is shown once every kind planned has one.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm.auto import tqdm

__all__ = ["Progress", "Stage", "duration"]


def duration(seconds: float) -> str:
    """``0:07``, ``12:03``, ``1:02:03``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Stage:
    """One stage of a run, as :meth:`Progress.stage` yields it: the caller names its steps, counts what
    arrived, and leaves a ``summary`` for the line written when the stage ends."""

    def __init__(self, progress: Progress, label: str, kind: str, weight: float) -> None:
        self.progress, self.label, self.kind, self.weight = progress, label, kind, weight
        self.started = self.step_started = progress.clock()
        self.step_name = ""
        self.done = 0
        self.total: int | None = None
        self.unit = ""
        self.whole = False
        self.summary = ""

    def step(
        self, name: str, total: int | None = None, unit: str = "", whole: bool = False
    ) -> None:
        """A new step of the stage: ``total`` items (clients, users) of ``unit`` to wait for; ``whole``:
        the step is all the stage's work, so its rate alone tells the time left."""
        with self.progress.lock:
            self.step_name, self.total, self.unit, self.done = name, total, unit, 0
            self.whole = whole
            self.step_started = self.progress.clock()
        self.progress.refresh()

    def advance(self, n: int = 1) -> None:
        """``n`` more items of the current step are done."""
        with self.progress.lock:
            self.done += n
        self.progress.refresh()

    def elapsed(self) -> float:
        return self.progress.clock() - self.started

    def left(self) -> float | None:
        """The estimated seconds left in this stage, or ``None`` when nothing tells yet: the time the last
        stage of its kind took, less the time spent; else (or for a ``whole`` step) the current step's rate."""
        rated = None
        if self.total and self.done:
            rate = (self.progress.clock() - self.step_started) / self.done
            rated = rate * max(self.total - self.done, 0)
        if self.whole and rated is not None:
            return rated
        elapsed = self.elapsed()
        expected = self.progress.estimate(self.kind, self.weight)
        if expected is not None and expected > elapsed:
            return expected - elapsed
        return rated


class Progress:
    """The stages of one run, shown on ``stream`` (standard error by default).

    ``live`` (default: whether ``stream`` is a terminal) redraws the current stage every ``tick``
    seconds; otherwise each stage writes one line when it ends. ``echo`` receives every line written
    (e.g. to keep them in a log file too); ``prefix`` starts every label."""

    def __init__(
        self,
        stream: TextIO | None = None,
        live: bool | None = None,
        echo: Callable[[str], None] | None = None,
        prefix: str = "",
        clock: Callable[[], float] = time.monotonic,
        tick: float | None = 1.0,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        self.echo, self.prefix, self.clock, self.tick = echo, prefix, clock, tick
        self.lock = threading.RLock()
        self.current: Stage | None = None
        self.pending: list[tuple[str, float]] = []
        self.plan_name = "run"
        self.history: dict[str, list[float]] = {}  # kind -> seconds per unit of weight
        self._bar: tqdm | None = None

    # -- estimates --

    def plan(self, stages: Iterable[tuple[str, float]], name: str = "run") -> None:
        """The stages still to come, as ``(kind, weight)``, in order: they make the estimate of the time
        left, shown as ``name ~0:00 left`` (e.g. ``rounds`` when stages outside the plan follow)."""
        with self.lock:
            self.pending = list(stages)
            self.plan_name = name

    def estimate(self, kind: str, weight: float = 1.0) -> float | None:
        """Seconds a stage of ``kind`` and ``weight`` should take, from the last one done (``None``: none)."""
        done = self.history.get(kind)
        return weight * done[-1] if done else None

    def run_left(self) -> float | None:
        """Seconds left in the run: the current stage and the planned ones; ``None`` if one has no estimate."""
        with self.lock:
            left = 0.0
            if self.current is not None:
                current = self.current.left()
                if current is None:
                    return None
                left += current
            for kind, weight in self.pending:
                expected = self.estimate(kind, weight)
                if expected is None:
                    return None
                left += expected
            return left

    # -- output --

    def size(self) -> tuple[int, int]:
        """The terminal's columns and lines (100 x 24 where it tells none, e.g. a pseudo-terminal with
        no size, where tqdm would draw nothing)."""
        try:
            columns, lines = os.get_terminal_size(self.stream.fileno())
        except (AttributeError, OSError, ValueError):
            columns = lines = 0
        return (columns if columns > 0 else 100, lines if lines > 0 else 24)

    def write(self, text: str) -> None:
        """A line above the live display (or a plain line)."""
        with self.lock:
            if self._bar is not None:
                self._bar.clear()
            self.stream.write(text + "\n")
            self.stream.flush()
            if self._bar is not None:
                self._bar.refresh()

    def note(self, text: str) -> None:
        """A line for whoever watches the run."""
        self.write(text)
        if self.echo is not None:
            self.echo(text)

    def status(self) -> str:
        """The current stage's live line, after its label."""
        stage = self.current
        if stage is None:
            return ""
        parts = []
        counted = f"{stage.done}/{stage.total} {stage.unit}" if stage.total else ""
        step = f"{stage.step_name} {counted}".strip()
        if step:
            parts.append(step)
        parts.append(f"{duration(stage.elapsed())} elapsed")
        left, run = stage.left(), self.run_left()
        if left is not None:
            parts.append(f"~{duration(left)} left")
        if run is not None and self.pending:
            parts.append(f"{self.plan_name} ~{duration(run)} left")
        return " · ".join(parts)

    def refresh(self) -> None:
        """Redraw the live line (every ``tick`` seconds, and whenever a stage counts something)."""
        with self.lock:
            stage, bar = self.current, self._bar
            if stage is None or bar is None:
                return
            text = self.status().replace("{", "{{").replace("}", "}}")
            label = (self.prefix + stage.label).replace("{", "{{").replace("}", "}}")
            bar.ncols, bar.nrows = self.size()
            if stage.total:
                bar.total, bar.n = stage.total, min(stage.done, stage.total)
                bar.bar_format = f"{label}: {{bar:12}} {text}"
            else:
                bar.bar_format = f"{label}: {text}"
            bar.refresh()

    def _ticker(self, stage: Stage, stop: threading.Event) -> None:
        while not stop.wait(self.tick):
            if self.current is stage:
                self.refresh()

    @contextmanager
    def stage(self, label: str, kind: str = "", weight: float = 1.0) -> Iterator[Stage]:
        """Show one stage while the block runs; its line (``summary``, time taken, the run's time left)
        is written when it ends, ``stopped`` if the block raised."""
        with self.lock:
            stage = Stage(self, label, kind, weight)
            for i, (planned, _) in enumerate(self.pending):
                if planned == kind:
                    del self.pending[i]
                    break
            self.current = stage
            if self.live:
                self._bar = tqdm(
                    total=None,
                    file=self.stream,
                    leave=False,
                    ncols=self.size()[0],
                    nrows=self.size()[1],
                    bar_format=label,
                    mininterval=0,
                )
        stop = threading.Event()
        ticker = None
        if self.live and self.tick:
            ticker = threading.Thread(target=self._ticker, args=(stage, stop), daemon=True)
            ticker.start()
        self.refresh()
        ok = False
        try:
            yield stage
            ok = True
        finally:
            stop.set()
            if ticker is not None:
                ticker.join()
            seconds = stage.elapsed()
            with self.lock:
                if ok and kind:
                    self.history.setdefault(kind, []).append(seconds / (weight or 1.0))
                self.current = None
                if self._bar is not None:
                    self._bar.close()
                    self._bar = None
                run = self.run_left() if ok and self.pending else None
                ending = [stage.summary] if ok and stage.summary else []
                ending.append(f"{'' if ok else 'stopped after '}{duration(seconds)}")
                if run is not None:
                    ending.append(f"{self.plan_name} ~{duration(run)} left")
                self.note(f"{self.prefix}{label}: {' · '.join(ending)}")
