"""The process a ``train.evaluate`` job runs: ``python -m zhongtai_train.evaluator``.

It runs on a backend like training code, never in the platform's own processes: the
model it loads is a pickle (``mlflow.sklearn``, ``cloudpickle``), and unpickling runs
whatever code the pickle names. The job gives it the MLflow variables
(``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_TOKEN``: a key limited to the project's
experiments, ``MLFLOW_RUN_ID``: the evaluation's run) and these arguments::

    python -m zhongtai_train.evaluator --model-uri runs:/<run id>/model \\
        --data data/test.csv --target label --evaluator classifier \\
        [--model-type classifier] --output output

It reads the data (CSV or Parquet, by the file's extension), runs
``mlflow.models.evaluate`` with MLflow's default evaluator for the model type, which
logs the metrics and its charts (confusion matrix, ROC and precision-recall curves…)
to the evaluation run, and writes into ``--output``:

* ``metrics.json``: ``{name: number}`` (null for NaN or infinity);
* ``artifacts.json``: the paths, in the run's artifacts, of the charts it logged.

An evaluator that a plugin registers with its own module is run the same way, with
the same arguments, and writes the same two files. Progress goes to standard output
as ``[evaluator] …`` lines, which become the job's log.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["CHART_SUFFIXES", "MODEL_TYPES", "main", "read_table"]

#: The model types of MLflow's default evaluator that this module runs.
MODEL_TYPES = ("classifier", "regressor")
#: Artifacts shown as charts in the evaluation's page (images a browser shows safely).
CHART_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")


def say(message: str) -> None:
    print(f"[evaluator] {message}", flush=True)


def read_table(path: Path) -> Any:
    """The file as a pandas DataFrame: CSV, or Parquet (``.parquet``, ``.pq``)."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ValueError(f"{path.name}: not a CSV or Parquet file")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m zhongtai_train.evaluator")
    parser.add_argument("--model-uri", required=True, help="runs:/<run id>/<path>")
    parser.add_argument("--data", required=True, type=Path, help="a CSV or Parquet file")
    parser.add_argument("--target", required=True, help="the column with the true values")
    parser.add_argument("--evaluator", required=True, help="the registered evaluator's name")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default=None)
    parser.add_argument("--output", required=True, type=Path, help="where the JSON files go")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    model_type = args.model_type or (args.evaluator if args.evaluator in MODEL_TYPES else None)
    if model_type is None:
        say(f"error: {args.evaluator!r} names no model type; pass --model-type")
        return 2
    say(f"reading {args.data.name}")
    try:
        data = read_table(args.data)
    except Exception as exc:  # a broken file is the evaluation's failure, said plainly
        say(f"error: cannot read {args.data.name}: {exc}")
        return 2
    if args.target not in data.columns:
        say(f"error: the data has no column {args.target!r} (columns: {list(data.columns)[:50]})")
        return 2
    say(f"{len(data)} rows, {len(data.columns)} columns; target {args.target!r}")

    import mlflow

    run_id = os.environ.get("MLFLOW_RUN_ID")
    say(f"loading {args.model_uri}")
    model = mlflow.pyfunc.load_model(args.model_uri)
    say(f"evaluating {args.model_uri} as a {model_type} (MLflow's default evaluator)")
    with mlflow.start_run(run_id=run_id) as run:
        result = mlflow.models.evaluate(  # type: ignore[no-untyped-call]
            model,
            data,
            targets=args.target,
            model_type=model_type,
            evaluators="default",
            # SHAP explanations need the shap package and take long; not part of the report.
            evaluator_config={"log_model_explainability": False},
        )
        charts = sorted(
            item.path
            for item in mlflow.MlflowClient().list_artifacts(run.info.run_id)
            if not item.is_dir and item.path.lower().endswith(CHART_SUFFIXES)
        )
    metrics = {str(name): _number(value) for name, value in sorted(result.metrics.items())}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    (args.output / "artifacts.json").write_text(json.dumps(charts, indent=1))
    for name, value in metrics.items():
        say(f"metric {name} = {value}")
    say(f"{len(metrics)} metrics, {len(charts)} charts logged to run {run.info.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
