"""Links into the MLflow UI that open the view a user needs, not the experiment's landing page.

MLflow 3 opens an experiment in its GenAI view unless told otherwise: the experiment carries the
``mlflow.experimentKind`` tag (set by the tracker) and every link here pins the model-training view
with ``workflowType=machine_learning``. The compare page takes the run ids and the experiment ids
as JSON lists in its hash route (``#/compare-runs?runs=[...]&experiments=[...]``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import quote

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3's "machine learning" experiment type


def _json(values: Sequence[str]) -> str:
    return quote(json.dumps(list(values), separators=(",", ":")), safe="")


def experiment_url(ui: str, experiment_id: str) -> str:
    """The experiment's runs table in the model-training view."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def compare_url(ui: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """The compare page of these runs: metrics side by side, parameters diffed."""
    return (f"{ui.rstrip('/')}/#/compare-runs?runs={_json(run_ids)}&experiments={_json([experiment_id])}"
            "&workflowType=machine_learning")
