"""Dataset-scale runs: :func:`run` writes one Parquet row per example, locally or on Ray."""

from .api import ENGINES, run
from .result import RunResult, open_run
from .tasks import TASKS

__all__ = ["ENGINES", "TASKS", "RunResult", "open_run", "run"]
