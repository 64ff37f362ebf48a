"""A one-line progress bar: epoch, step, loss, accuracy, images per second, time to finish.

On a terminal the line is redrawn in place a few times a second; elsewhere (a log file, a
batch job) a line is printed every ``every`` seconds so that logs stay short.
"""
from __future__ import annotations

import datetime as dt
import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Tracks the run's pace and draws the progress line for the current epoch."""

    def __init__(self, epochs: int, start_epoch: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, every: float = 30.0) -> None:
        self.epochs = epochs
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = 0.2 if self.tty else every
        self.epoch_times: list[float] = []
        self.epoch, self.steps = start_epoch, 0
        self.t_epoch = self.t_last = time.perf_counter()

    def start_epoch_(self, epoch: int, steps: int) -> None:
        """Begin ``epoch`` of ``steps`` steps."""
        self.epoch, self.steps = epoch, steps
        self.t_epoch = time.perf_counter()
        self.t_last = 0.0 if self.tty else self.t_epoch

    def eta(self, step: int) -> float:
        """Seconds to the end of the run, from the pace so far."""
        elapsed = time.perf_counter() - self.t_epoch
        this_epoch = elapsed / max(step, 1) * self.steps
        per_epoch = (sum(self.epoch_times) / len(self.epoch_times)) if self.epoch_times else this_epoch
        return max(this_epoch - elapsed, 0.0) + per_epoch * (self.epochs - self.epoch - 1)

    def due(self, step: int) -> bool:
        """Whether the line should be drawn after ``step`` (1-based) of the epoch."""
        return self.enabled and (time.perf_counter() - self.t_last >= self.interval
                                 or (self.tty and step == self.steps))

    def draw(self, step: int, loss: float, top1: float, images: int) -> None:
        """Draw the line after ``step`` with the running loss / top-1 and the images seen."""
        now = self.t_last = time.perf_counter()
        rate = images / max(now - self.t_epoch, 1e-9)
        eta = self.eta(step)
        finish = (dt.datetime.now() + dt.timedelta(seconds=eta)).strftime("%H:%M")
        width = len(str(self.steps))
        line = (f"epoch {self.epoch + 1}/{self.epochs} [{step:>{width}}/{self.steps}] "
                f"loss {loss:.4f} top1 {top1:5.2f}% {rate:7.1f} img/s "
                f"eta {format_duration(eta)} (~{finish})")
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end_epoch(self, seconds: float) -> None:
        """Record the epoch's duration (training and validation) and end the line."""
        self.epoch_times.append(seconds)
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
