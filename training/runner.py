"""Run ``train-member`` for many members in parallel worker processes, with a live display.

Each worker is a fresh ``ensemble train-member`` process (TensorFlow does not survive a fork), so
the local run and a cluster's Indexed Job execute the very same code. Workers report through
their progress files; the parent only watches those and the exit codes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from contracts.run_layout import RunLayout
from training.errors import TrainingError
from training.layout import load_config
from training.progress import MemberProgress, epoch_line, eta_text, read_progress

POLL_SECONDS = 0.5


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class _Worker:
    indices: list[int]
    process: subprocess.Popen[bytes]
    log: IO[bytes]


def worker_command(out_dir: Path, indices: Sequence[int], threads: int | None) -> list[str]:
    command = [sys.executable, "-m", "cli", "train-member", "--out", str(out_dir)]
    for index in indices:
        command += ["--index", str(index)]
    if threads:
        command += ["--threads", str(threads)]
    return command


def assign(indices: Sequence[int], workers: int) -> list[list[int]]:
    """Members per worker process, round robin: a process imports TensorFlow once for all its members."""
    workers = max(1, min(workers, len(indices)))
    return [list(indices[w::workers]) for w in range(workers)]


def _table(states: Sequence[MemberProgress], total: int, elapsed: float) -> Table:
    table = Table(title=f"Training {total} members ({elapsed:.0f}s)", title_justify="left")
    columns = ("member", "state", "epoch", "loss", "val_loss", "best", "accuracy", "val_acc", "lr", "eta")
    for column in columns:
        table.add_column(column, justify="right" if column != "state" else "left")
    for p in states:
        epoch = f"{p.epoch}/{p.epochs}" if p.epochs else "-"
        state = {"done": "[green]done[/]", "failed": f"[red]failed[/] {p.message}"}.get(p.state, p.state)
        figures = [_fixed(v) for v in (p.loss, p.val_loss, p.best_val_loss, p.accuracy, p.val_accuracy)]
        rate = f"{p.learning_rate:.2g}" if p.learning_rate is not None else "-"
        eta = eta_text(p.eta_seconds) if p.state == "training" else "-"
        table.add_row(f"{p.index + 1}/{total}", state, epoch, *figures, rate, eta)
    return table


def _fixed(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


class _PlainReporter:
    """For CI logs: one line per member state change and every ``every`` epochs, nothing redrawn."""

    def __init__(self, console: Console, total: int, every: int = 1) -> None:
        self.console = console
        self.total = total
        self.every = every
        self.seen: dict[int, tuple[str, int]] = {}

    def update(self, states: Sequence[MemberProgress]) -> None:
        for p in states:
            last_state, last_epoch = self.seen.get(p.index, ("waiting", 0))
            if p.state == last_state and (p.state != "training" or p.epoch - last_epoch < self.every):
                continue
            self.seen[p.index] = (p.state, p.epoch)
            label = f"member {p.index + 1}/{self.total}"
            if p.state == "training":
                self.console.print(epoch_line(p, label), highlight=False)
                continue
            epoch = f" epoch {p.epoch}/{p.epochs}" if p.epochs else ""
            message = f" {p.message}" if p.message else ""
            self.console.print(f"{label}: {p.state}{epoch}{message}", highlight=False)


class _Pool:
    """The worker processes of one run: starts them, notes which members failed and why, stops them."""

    def __init__(self, layout: RunLayout, indices: Sequence[int], threads: int | None) -> None:
        self.layout = layout
        self.indices = list(indices)
        self.threads = threads
        self.running: list[_Worker] = []
        self.failed: dict[int, str] = {}
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}

    def states(self) -> list[MemberProgress]:
        return [read_progress(self.layout.member(i).root, i) for i in self.indices]

    def launch(self, number: int, chunk: list[int]) -> None:
        for index in chunk:
            member = self.layout.member(index)
            member.root.mkdir(parents=True, exist_ok=True)
            for stale in (member.progress, member.record, member.predictions):
                stale.unlink(missing_ok=True)
        log = (self.layout.members / f"worker{number}.log").open("wb")
        command = worker_command(self.layout.root, chunk, self.threads)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.running.append(_Worker(chunk, process, log))

    def reap(self) -> None:
        """Forget the workers that exited; a failed one's unfinished members fail with its reason."""
        for worker in list(self.running):
            code = worker.process.poll()
            if code is None:
                continue
            worker.log.close()
            self.running.remove(worker)
            if code == 0:
                continue
            log_tail = _last_line(Path(worker.log.name))
            for index in worker.indices:
                progress = read_progress(self.layout.member(index).root, index)
                if progress.state == "done":
                    continue
                if progress.state == "waiting":
                    self.failed[index] = "not trained: its worker stopped"
                else:
                    self.failed[index] = progress.message or log_tail or f"exit code {code}"

    def stop(self) -> None:
        """Terminate the workers still running, killing any that do not exit within 10 seconds."""
        for worker in self.running:
            worker.process.terminate()
        for worker in self.running:
            try:
                worker.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            worker.log.close()


def run_members(
    out_dir: Path, indices: Sequence[int], workers: int, console: Console, threads: int | None = None
) -> None:
    """Train ``indices`` with at most ``workers`` processes at a time; raise TrainingError if any fails."""
    layout = RunLayout(out_dir)
    total = len(indices)
    workers = max(1, min(workers, total))
    if threads is None and workers > 1:
        threads = max(1, available_cores() // workers)
    pool = _Pool(layout, indices, threads)
    started = time.monotonic()
    every = load_config(layout).logging.every
    plain = None if console.is_terminal else _PlainReporter(console, total, every)
    live = (
        Live(_table(pool.states(), total, 0.0), console=console, refresh_per_second=4)
        if plain is None
        else None
    )
    try:
        if live is not None:
            live.start()
        for number, chunk in enumerate(assign(indices, workers)):
            pool.launch(number, chunk)
        while pool.running:
            time.sleep(POLL_SECONDS)
            pool.reap()
            current = pool.states()
            if live is not None:
                live.update(_table(current, total, time.monotonic() - started))
            elif plain is not None:
                plain.update(current)
    finally:
        pool.stop()
        if live is not None:
            live.stop()
    if pool.failed:
        details = "; ".join(f"m{i}: {msg}" for i, msg in sorted(pool.failed.items()))
        raise TrainingError(
            f"{len(pool.failed)} of {total} members failed ({details}); logs in {layout.members}/worker*.log"
        )


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""
