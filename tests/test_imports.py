"""Data flows, deployments and the CLI start without the heavy libraries: torch, transformers and
peft load inside the training and scoring tasks, web3 inside the chain ingest's flow body."""

import subprocess
import sys

DATA_FLOWS = ["flows.daily", "flows.daily_ingest", "flows.ingest_chain", "flows.ingest_prices", "flows.scrape_tweets",
              "flows.build_dataset", "flows.backfill", "flows.predict", "flows.evaluate", "flows.train_lora", "flows.cli"]


def test_flow_modules_import_without_torch_transformers_peft_or_web3():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in DATA_FLOWS)
            + "print(sorted(m for m in ('torch', 'transformers', 'peft', 'web3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_training_and_scoring_import_without_polars_prefect_or_mlflow():
    """The GPU image has torch, transformers and peft but no polars, prefect or mlflow: the training core,
    the encoder kind and the scorers run there from a dataset version's JSON records (bench/sweep_train_defaults.py)."""
    mods = ["tasks.training.train", "tasks.training.encoder", "tasks.evaluation.scoring", "tasks.evaluation.foldmodel",
            "tasks.core.manifests"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "print(sorted(m for m in ('polars', 'prefect', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
