"""The whole DAG for real through Prefect: daily-ingest -> build-dataset -> train-lora -> evaluate.

Local anvil node (synthetic traffic), the bundled real price and tweet samples, a tiny model
built on the fly, MLflow on sqlite. Then the adapter is pulled back from MLflow and reloaded
with peft: it must give the same logits as the adapter the run saved.
"""

import pytest
import torch

from flows.build_dataset import build_dataset
from flows.daily_ingest import daily_ingest
from flows.evaluate import evaluate
from flows.train_lora import train_lora
from tasks.chain.localnode import free_port
from tasks.core.settings import load_settings
from tasks.tracking.tracker import MlflowTracker, base_model_sha256
from tests.browser import browser, mlflow_ui, rendered_text
from tests.conftest import CHAIN_END, CHAIN_START

pytestmark = pytest.mark.slow


def test_daily_ingest_build_train_evaluate(seeded_node, data_dir, tmp_path, monkeypatch):
    from peft import PeftModel

    from tasks.training.train import load_base_model

    node, _ = seeded_node
    ingest = daily_ingest(CHAIN_START, CHAIN_END, rpc_url=node.url)
    assert ingest["chain"]["partitions_done"] == ingest["prices"]["partitions_done"] == (CHAIN_END - CHAIN_START).days + 1
    manifest = build_dataset()
    monkeypatch.setenv("CHAINSIGNAL_TRACKING__SYSTEM_METRICS_S", "0.2")
    result = train_lora(epochs=2, micro_batch_size=8, batch_size=16)
    assert result["evaluation"]["verdict"].startswith("LoRA")

    settings = load_settings()
    tracker = MlflowTracker.from_settings(settings, data_dir / "mlartifacts")
    run = tracker.client.get_run(result["run_id"])
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["train.lora_r"] == "8" and params["dataset.fingerprint"] == manifest["fingerprint"]
    assert "rpc.api_key" not in params and params["rpc.api_key_set"] == "False"
    for key in ("test_accuracy", "test_macro_f1", "test_mcc", "validation_macro_f1", "test_mcc_ci95_low", "trainable_share"):
        assert key in metrics, key
    assert not [k for k in metrics if k.startswith(("baseline_", "ensemble_"))]  # the baselines are runs of their own
    assert len(tracker.client.get_metric_history(run.info.run_id, "train_loss")) == result["steps"]
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics
    assert tags["chain_data"] == "synthetic local chain" and tags["verdict"] == result["evaluation"]["verdict"]
    logged = run.inputs.dataset_inputs[0].dataset
    assert logged.name == f"direction-{manifest['fingerprint']}" and logged.digest == manifest["fingerprint"]
    artifacts = {a.path for a in tracker.client.list_artifacts(run.info.run_id)}
    assert {"adapter", "base_model", "plots", "evaluation", "settings.json"} <= artifacts
    baselines = tracker.client.search_runs([tracker.experiment_id], "tags.model_kind = 'baseline'")
    assert {r.data.tags["baseline"] for r in baselines} == {"majority", "persistence", "logistic", "sentiment_rule", "bilstm"}
    assert all("test_macro_f1" in r.data.metrics for r in baselines)
    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's model-training view
    # A second evaluation of the same dataset version reuses the baseline runs instead of logging them again.
    again = evaluate(run_id=result["run_id"])
    assert len(tracker.client.search_runs([tracker.experiment_id], "tags.model_kind = 'baseline'")) == len(baselines)
    assert again["compare"] == result["compare"] and result["verdict"] == result["evaluation"]["verdict"]

    # From where the user looks: the MLflow UI on this store, opened at the compare link the run printed.
    port = free_port()
    link = result["compare"].replace(settings.mlflow_ui_url, f"http://127.0.0.1:{port}")
    with mlflow_ui(settings.tracking_uri, port), browser() as page:
        text = rendered_text(page, link, ["test_macro_f1", run.info.run_name, "baseline-persistence"], "mlflow_compare.png")
    assert f"Comparing {len(baselines) + 1} Runs" in text and run.info.run_name in text
    assert all(f"baseline-{b}" in text for b in ("majority", "persistence", "logistic", "bilstm")) and "test_macro_f1" in text
    versions = tracker.client.search_model_versions(f"name = '{settings.tracking.registered_model}'")
    assert [v.run_id for v in versions] == [run.info.run_id]

    # Round trip: adapter and base model from MLflow -> peft -> same logits as the run's own copy.
    adapter = tracker.download(run.info.run_id, "adapter", tmp_path / "dl")
    base_dir = tracker.download(run.info.run_id, "base_model", tmp_path / "dl")
    assert params["base_model.sha256"] == tags["base_model_sha256"] == base_model_sha256(str(base_dir))
    tok, base = load_base_model(str(base_dir), torch.device("cpu"))
    reloaded = PeftModel.from_pretrained(base, str(adapter)).eval()
    _, base2 = load_base_model(str(base_dir), torch.device("cpu"))
    original = PeftModel.from_pretrained(base2, str(data_dir / "runs" / run.info.run_id / "adapter")).eval()
    ids = tok("### Response:\nPOSITIVE", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, original(ids).logits, atol=1e-6)
    # The adapter is not a no-op: LoRA weights moved away from their zero init.
    b = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
    assert b and any(float(p.abs().sum()) > 0 for p in b)
