"""A training run's per-chunk metrics: metrics.jsonl and TensorBoard event files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from twostage_jax._io import atomic_open


class NoLog:
    """Stands in for `MetricsLog` on processes other than 0."""

    def write(self, step: int, means: dict[str, np.ndarray]) -> None:
        pass

    def close(self) -> None:
        pass


class MetricsLog:
    """Per-chunk metrics to JSONL (atomic rewrite on resume) and TensorBoard, both flushed per chunk.

    TensorBoard events go through tensorboardX's `EventsWriter`, synchronously: `SummaryWriter`
    queues them for a thread whose queue `flush()` does not empty, so a killed run lost its last
    chunks.
    """

    def __init__(self, directory: Path, resume_step: int):
        self.path = directory / "metrics.jsonl"
        lines = []
        if self.path.exists() and resume_step > 0:
            with open(self.path) as f:
                for line in f:
                    try:
                        if json.loads(line)["step"] <= resume_step:
                            lines.append(line if line.endswith("\n") else line + "\n")
                    except (json.JSONDecodeError, KeyError):
                        break  # a line cut by a kill: drop it and everything after
        with atomic_open(self.path, "w") as f:
            f.writelines(lines)
        self._file = open(self.path, "a")
        try:
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto.event_pb2 import Event, SessionLog
            from tensorboardX.proto.summary_pb2 import Summary
        except ImportError:  # pragma: no cover - tensorboardX is a core dependency
            self._tb = None
            return
        self._event, self._summary = Event, Summary
        (directory / "tb").mkdir(parents=True, exist_ok=True)
        self._tb = EventsWriter(str(directory / "tb" / "events"))
        if resume_step:  # TensorBoard hides the events of steps > resume_step written before a kill
            self._tb.write_event(Event(wall_time=time.time(), step=resume_step + 1,
                                       session_log=SessionLog(status=SessionLog.START)))
            self._tb.flush()

    def write(self, step: int, means: dict[str, np.ndarray]) -> None:
        """Appends one chunk's per-seed means; TensorBoard first, so whatever a kill leaves in
        metrics.jsonl is in the event file too."""
        num_seeds = len(next(iter(means.values())))
        if self._tb is not None:
            now = time.time()
            for i in range(num_seeds):
                values = [self._summary.Value(tag=f"seed{i}/{k}", simple_value=float(v[i]))
                          for k, v in means.items()]
                self._tb.write_event(self._event(wall_time=now, step=int(step),
                                                 summary=self._summary(value=values)))
            self._tb.flush()
        for i in range(num_seeds):
            row = {"step": int(step), "seed": i, **{k: float(v[i]) for k, v in means.items()}}
            self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
