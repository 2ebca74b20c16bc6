"""Reading a run folder for the report: Lightning's ``metrics.csv``, ``hparams.yaml``, JSON outputs and
``predictions.jsonl``. A missing or corrupt optional file is reported as a problem string, never raised."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from wuxia_lightning.metrics.registry import lookup

Metrics = dict[str, list[tuple[int, float]]]


def read_metrics(csv_path: str | Path) -> Metrics:
    """``metric -> [(step, value)]`` from a CSVLogger file, skipping blank cells.

    ``epoch`` and ``step`` are bookkeeping columns, not metrics. Unparsable cells are skipped like blanks;
    ``nan``/``inf`` are kept (a diverged run should show as such in the table) and filtered when plotting.
    """
    metrics: Metrics = {}
    with Path(csv_path).open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            step = _parse_float(row.get("step"))
            if step is None:
                continue
            for name, cell in row.items():
                value = _parse_float(cell)
                if name in ("epoch", "step") or name is None or value is None:
                    continue
                metrics.setdefault(name, []).append((int(step), value))
    return metrics


def _parse_float(cell: str | None) -> float | None:
    if cell is None or not cell.strip():
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def read_json(path: Path) -> tuple[object | None, str | None]:
    """(data, problem): a missing or corrupt optional file is reported, never raised."""
    if not path.is_file():
        return None, "not logged"
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, ValueError) as error:
        return None, f"unreadable ({type(error).__name__}: {error})"


def read_hparams(path: Path) -> dict | None:
    if not path.is_file():
        return None
    import yaml  # a Lightning dependency; imported here because only the hparams section needs it

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None  # e.g. python/object tags that safe_load refuses: the report just omits hparams
    return data if isinstance(data, dict) else None


def read_predictions(folder: Path) -> tuple[list[dict], str | None]:
    path = folder / "predictions.jsonl"
    if not path.is_file():
        return [], f"no predictions.jsonl in {folder}"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            row = None  # a truncated last line (interrupted predict) should not hide the rest
        if isinstance(row, dict):
            rows.append(row)
    return rows, None


def detect_stage(metrics: Metrics) -> int | None:
    """1 = style adapter, 2 = instruct adapter (from the registry's stage of each logged key), None = unclear."""
    stages = {metric.stage for key in metrics if (metric := lookup(key)) is not None} - {None}
    return stages.pop() if len(stages) == 1 else None
