"""predict and backfill through Prefect on real parts (ingested lake, MLflow on sqlite, Dask)."""

import json
from datetime import date

from flows.backfill import backfill
from flows.build_dataset import build_dataset
from flows.predict import predict
from flows.train_lora import train_lora
from tasks.core.settings import load_settings
from tasks.core.storage import Lake
from tasks.tracking.champion import CHAMPION, find_champion
from tasks.tracking.tracker import MlflowTracker


def test_predict_skips_without_champion_then_writes_the_signal(lake_copy, data_dir):
    build_dataset()
    assert predict()["status"] == "skipped"
    # the alpaca-lora knobs are flow parameters too (deployments pass them as --param)
    result = train_lora(epochs=1, batch_size=16, micro_batch_size=16, run_evaluation=False,
                        target_modules=["q_proj", "k_proj", "v_proj"], train_on_inputs=True)
    settings = load_settings()
    tracker = MlflowTracker.from_settings(settings, data_dir / "mlartifacts")
    params = tracker.client.get_run(result["run_id"]).data.params
    assert params["train.target_modules"] == '["q_proj", "k_proj", "v_proj"]' and params["train.train_on_inputs"] == "True"
    adapter_config = json.loads((data_dir / "runs" / result["run_id"] / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == ["k_proj", "q_proj", "v_proj"]
    name = settings.tracking.registered_model
    if find_champion(tracker.client, name) is None:  # promotion rules are tested elsewhere: name it here
        tracker.client.set_registered_model_alias(name, CHAMPION, result["version"])
    out = predict()
    assert out["status"] == "done" and out["signal"] in {"POSITIVE", "NEUTRAL", "NEGATIVE"}
    assert abs(out["p_positive"] + out["p_neutral"] + out["p_negative"] - 1) < 1e-3
    lake = Lake(data_dir / "lake")
    signals = lake.scan("signals").collect()
    assert signals.height == 1 and signals["model_version"][0] == result["version"]
    assert (signals["target_date"] - signals["date"]).dt.total_days()[0] == 1
    again = predict()  # same day again: the day's signal is replaced, not appended
    assert again["status"] == "done" and lake.scan("signals").collect().height == 1


def test_backfill_on_dask_matches_the_sequential_ingest(seeded_node, ingested_lake, data_dir):
    node, _ = seeded_node
    days = (date(2021, 1, 20), date(2021, 1, 24))
    summary = backfill(*days, rpc_url=node.url)
    assert summary["partitions_done"] == 5
    ours = Lake(data_dir / "lake").scan("transactions").collect().sort("transaction_hash")
    reference = Lake(ingested_lake).scan("transactions", *days).collect().sort("transaction_hash")
    assert ours.height == reference.height > 0 and ours.equals(reference)
