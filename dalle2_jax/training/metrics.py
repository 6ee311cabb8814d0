"""Metric writers: console and TensorBoard (clu) plus `metrics.jsonl`, and progress timing."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from clu import metric_writers
from etils import epath


class JsonlWriter(metric_writers.MetricWriter):
    """Appends one JSON object per `write_scalars` call: `{"step": N, "name": value, ...}`."""

    def __init__(self, path: str | epath.Path):
        self._path = epath.Path(path)
        self._file = self._path.open("a")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # readers (and the resume tests) follow the file live

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    # Only scalars go to metrics.jsonl; images, texts etc. go to TensorBoard.
    def write_summaries(self, step, values, metadata=None) -> None:  # noqa: D102
        pass

    def write_images(self, step, images) -> None:  # noqa: D102
        pass

    def write_videos(self, step, videos) -> None:  # noqa: D102
        pass

    def write_audios(self, step, audios, *, sample_rate) -> None:  # noqa: D102
        pass

    def write_texts(self, step, texts) -> None:  # noqa: D102
        pass

    def write_histograms(self, step, arrays, num_buckets=None) -> None:  # noqa: D102
        pass

    def write_hparams(self, hparams) -> None:  # noqa: D102
        pass


def make_writer(workdir: str | epath.Path, is_chief: bool) -> metric_writers.MetricWriter:
    """Console + TensorBoard event files in `workdir` + `workdir/metrics.jsonl` (chief only)."""
    workdir = epath.Path(workdir)
    if not is_chief:
        return metric_writers.create_default_writer(just_logging=True)
    return metric_writers.MultiWriter(
        [
            metric_writers.create_default_writer(workdir, asynchronous=True),
            JsonlWriter(workdir / "metrics.jsonl"),
        ]
    )


class StepTimer:
    """Steps per second over the last logging interval and the time left for the run."""

    def __init__(self, start_step: int, num_steps: int):
        self._num_steps = num_steps
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def exclude(self, seconds: float) -> None:
        """Removes time spent on evaluation or checkpointing from the next rate."""
        self._last_time += seconds

    def tick(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        return {
            "steps_per_sec": rate,
            "eta_minutes": (self._num_steps - step) / max(rate, 1e-9) / 60.0,
        }
