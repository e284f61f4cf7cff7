"""MLflow beyond the loss curves: the run's grids after training, and later the evaluation's
metrics, its JSON and strip, and the report, all logged to the *same* MLflow run as the training.

Training with tracking.mlflow=true writes runs.TRACKING ({"tracking_uri", "run_id"}) into the run
directory; `log_to_tracked_run` finds it there, so `evaluate` and `report` need no MLflow option.
A run trained without tracking is left alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from medsynth.errors import MedsynthError
from medsynth.runs import TRACKING
from medsynth.writers import write_text


def record_tracked_run(run_dir: Path, tracking_uri: str, run_id: str) -> None:
    write_text(run_dir / TRACKING, json.dumps({"tracking_uri": tracking_uri, "run_id": run_id}, indent=2))


def flat_metrics(tree: dict, prefix: str = "") -> dict[str, float]:
    """Finite numeric leaves of a nested dict as {"a/b/c": value} (MLflow metric names)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def log_to_tracked_run(run_dir: Path, metrics: dict[str, float] | None = None, files=(), folder: str = "",
                       log=print) -> bool:
    """Log metrics and files (artifacts, under `folder`) to the MLflow run this run directory was
    trained in; False (and nothing done) when it was trained without tracking."""
    record = Path(run_dir) / TRACKING
    if not record.is_file():
        return False
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        log(f"{run_dir} was tracked in MLflow, but mlflow is not installed here: not logged "
            "(pip install 'medsynth[tracking]')")
        return False
    try:
        info = json.loads(record.read_text())
        client = MlflowClient(tracking_uri=info["tracking_uri"])
        for name, value in (metrics or {}).items():
            client.log_metric(info["run_id"], name, value)
        for path in files:
            if Path(path).is_file():
                client.log_artifact(info["run_id"], str(path), folder or None)
    except (ValueError, KeyError) as exc:
        raise MedsynthError(f"{record}: not a readable MLflow record ({exc})") from None
    except Exception as exc:  # the store moved or is locked: the evaluation itself is already written
        log(f"MLflow run of {run_dir} could not be updated ({str(exc).splitlines()[0][:200]})")
        return False
    return True
