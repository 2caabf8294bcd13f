"""Metric output: JSON lines always, TensorBoard when asked, a progress bar (tqdm) with rate and ETA.

A resumed run first drops the rows past the step it restored (:func:`drop_rows_after`), so
``metrics.jsonl`` holds each step once, as the run that is kept computed it.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from ib_attention_jax.runtime.atomic import atomic_write_text
from ib_attention_jax.runtime.paths import as_path


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | dict):
        return value
    arr = np.asarray(value)
    if arr.ndim == 0:
        v = float(arr)
        return v if math.isfinite(v) else str(v)
    return arr.tolist()


def drop_rows_after(workdir, step: int, kinds_at_step: tuple[str, ...] = ()) -> int:
    """Rewrites ``metrics.jsonl`` without the rows past ``step`` (and those at ``step`` of ``kinds_at_step``).

    A run resumed from the checkpoint of ``step`` computes those rows again. Lines that are not JSON (a
    write cut short by a kill) go too. Returns how many rows were dropped.
    """
    path = as_path(workdir) / "metrics.jsonl"
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines(keepends=True):
        try:
            row = json.loads(line)
            late = row["step"] > step or (row["step"] == step and row.get("kind") in kinds_at_step)
        except (ValueError, KeyError, TypeError):
            late = True
        if late:
            dropped += 1
        else:
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        atomic_write_text(path, "".join(kept))
    return dropped


class MetricWriter:
    """Writes ``{"step", "kind", ...}`` lines to ``metrics.jsonl`` (and TensorBoard scalars)."""

    def __init__(self, workdir, tensorboard: bool = False, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = as_path(workdir) / "metrics.jsonl"
        self._tb = None
        self._remote_lines: list[str] | None = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if "://" in str(self.path):  # object stores cannot append: rewrite the (small) file
                self._remote_lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
                self._file = None
            else:
                self._file = open(self.path, "a", buffering=1)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(as_path(workdir) / "tensorboard"))

    def write(self, step: int, kind: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind, "time": round(time.time(), 3)}
        record.update({k: _scalar(v) for k, v in metrics.items()})
        line = json.dumps(record) + "\n"
        if self._remote_lines is None:
            self._file.write(line)
        else:
            self._remote_lines.append(line)
            self.path.write_text("".join(self._remote_lines))
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, float):
                    self._tb.add_scalar(f"{kind}/{key}", value, int(step))

    def write_image(self, step: int, tag: str, image: np.ndarray | None) -> None:
        """An (H, W, 3) uint8 image to TensorBoard when it is on (metrics.jsonl keeps no images); None: nothing."""
        if self.enabled and self._tb is not None and image is not None:
            self._tb.add_image(tag, np.asarray(image), int(step), dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            if self._file is not None:
                self._file.close()
            if self._tb is not None:
                self._tb.close()


class Progress:
    """The progress line (tqdm's bar: step, rate, ETA) with images per second and a few metrics.

    ``images_per_second`` (since the run's first step here) goes into the metrics and the summary. Off a
    terminal the line is refreshed every 30 s instead of every 2 s, so logs stay short.
    """

    def __init__(self, total_steps: int, start_step: int, batch_size: int, enabled: bool = True) -> None:
        self.total, self.start, self.batch = total_steps, start_step, batch_size
        self.t0 = time.perf_counter()
        self.images_per_second = 0.0
        self._shown = start_step
        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", file=sys.stderr, disable=not enabled,
                         dynamic_ncols=True, mininterval=2.0 if sys.stderr.isatty() else 30.0, smoothing=0.1)

    def update(self, step: int, metrics: dict[str, float], force: bool = False) -> None:
        elapsed = time.perf_counter() - self.t0
        self.images_per_second = (step - self.start) * self.batch / elapsed if elapsed > 0 else 0.0
        self._bar.set_postfix({"img/s": f"{self.images_per_second:.0f}", **{k: f"{v:.4g}" for k, v in metrics.items()}},
                              refresh=False)
        self._bar.update(step - self._shown)
        self._shown = step
        if force:
            self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
