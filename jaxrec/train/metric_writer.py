"""Metric logging: one JSON object per line (``metrics.jsonl``) and TensorBoard event files (``tb/``),
written by process 0 only in multi-host runs.

tensorboardX writes TensorBoard event files without TensorFlow. On resume, ``truncate_after(step)`` drops
JSONL lines logged after the restored checkpoint (they will be logged again by the resumed run), so the file
reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import pathlib


def _to_float(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else str(f)


class MetricWriter:
    def __init__(self, workdir, *, tensorboard: bool = True):
        import jax

        self.enabled = jax.process_index() == 0  # one writer per run, not one per host
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.workdir / "metrics.jsonl"
        self._tb = None
        if tensorboard and self.enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.workdir / "tb"))

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.jsonl_path.exists():
            return
        keep = []
        for line in self.jsonl_path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:  # a line cut by a kill: drop it, it is re-logged
                continue
        self.jsonl_path.write_text("".join(k + "\n" for k in keep))

    def write(self, step: int, metrics: dict, *, prefix: str = "") -> dict:
        row = {"step": int(step)}
        for k, v in metrics.items():
            f = _to_float(v)
            if f is not None:
                row[f"{prefix}{k}"] = f
        if not self.enabled:
            return row
        with self.jsonl_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, float):
                    self._tb.add_scalar(k, v, step)
        return row

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
