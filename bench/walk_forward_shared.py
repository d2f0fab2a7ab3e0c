"""Walk-forward on the shared price history: the evaluation to quote, through the product's own path.

Not a test. REAL data: the ETH and BTC daily candles of the shared data (Binance spot, 2017-08-17 ..
2024-06-30; origin and license in data/sample/README.md, whose bundled copies are byte-identical to
shared/data/real/prices/). In a scratch data dir it runs, in one process:

  1. ingest-prices  (prices.source = "file") over --start .. --end into a fresh lake;
  2. build-dataset  for the direction task over the same days. The lake holds prices only: no chain and no
     posts are ingested (none exist for these years in the shared data, and none are made up), so the
     chain and social features are empty, the records say "chain (no chain data): n/a" and "social: n/a",
     and the baselines' matrix holds those columns as constants; the models see price features only;
  3. walk-forward   every --step-days labelled days from --first-test-day on an expanding window, each fold
     relabelled with its own training days' thresholds, majority / persistence / logistic and (unless
     --no-lora) the tiny causal LoRA (--epochs) per fold, the folds fanned out --concurrency at a time.

It reads the parent MLflow run back (per-fold table, pooled metrics, verdict, the plot) and writes
<out>.md (the command and the machine first), <out>.json and <out>.png.

Usage:  .venv/bin/python bench/walk_forward_shared.py [--epochs 1] [--no-lora] [--concurrency 1]
            [--out bench/results/walk_forward_shared]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODELS = ("majority", "persistence", "logistic", "lora")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prices-dir", type=Path, default=ROOT / "data" / "sample" / "prices",
                   help="<asset>_usd_daily.csv files (default: the bundled copies of the shared candles)")
    p.add_argument("--data-dir", type=Path, default=ROOT / "var" / "bench" / "walk_forward_shared",
                   help="scratch data dir (lake, dataset, MLflow store); emptied first")
    p.add_argument("--start", type=date.fromisoformat, default=date(2018, 1, 1))
    p.add_argument("--end", type=date.fromisoformat, default=date(2024, 6, 30))
    p.add_argument("--first-test-day", type=date.fromisoformat, default=date(2019, 1, 1))
    p.add_argument("--step-days", type=int, default=90)
    p.add_argument("--validation-days", type=int, default=90)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--no-lora", dest="lora", action="store_false")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "walk_forward_shared")
    return p.parse_args(argv)


def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "load_1m_at_start": round(os.getloadavg()[0], 2), "os": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "device": "cpu"}


def configure(args: argparse.Namespace) -> None:
    """The product's settings for this run, by its own environment variables (nothing else is patched)."""
    if args.data_dir.exists():
        shutil.rmtree(args.data_dir)
    args.data_dir.mkdir(parents=True)
    os.environ.update({
        "CHAINSIGNAL_STORAGE__DATA_DIR": str(args.data_dir.resolve()),
        "CHAINSIGNAL_PRICES__SOURCE": "file",
        "CHAINSIGNAL_PRICES__FILE_DIR": str(args.prices_dir.resolve()),
        "CHAINSIGNAL_PRICES__ASSETS": '["ETH", "BTC"]',
        "CHAINSIGNAL_DATASET__NAME": "direction",
        "CHAINSIGNAL_TRAIN__MODEL_KIND": "causal",
        "CHAINSIGNAL_TRAIN__BASE_MODEL": "tiny-llama",
    })
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(args: argparse.Namespace) -> dict:
    from flows.build_dataset import build_dataset
    from flows.ingest_prices import ingest_prices
    from flows.walk_forward import walk_forward

    seconds = {}
    t = time.perf_counter()
    ingested = ingest_prices(args.start, args.end)
    seconds["ingest"] = time.perf_counter() - t
    t = time.perf_counter()
    manifest = build_dataset(args.start, args.end)
    seconds["build"] = time.perf_counter() - t
    t = time.perf_counter()
    summary = walk_forward(dataset=manifest["fingerprint"], step_days=args.step_days, validation_days=args.validation_days,
                           first_test_day=args.first_test_day, epochs=args.epochs, lora=args.lora,
                           concurrency=args.concurrency)
    seconds["walk_forward"] = time.perf_counter() - t
    return {"ingest": ingested, "manifest": manifest, "summary": summary, "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def read_back(summary: dict, out_png: Path) -> dict:
    """The parent run's per-fold table, pooled metrics and verdict from MLflow; its plot copied to ``out_png``."""
    import tempfile

    from mlflow.tracking import MlflowClient

    from tasks.core.settings import load_settings
    from tasks.core.storage import Workspace

    settings = load_settings()
    client = MlflowClient(settings.tracking_uri)
    parent = client.get_run(summary["run_id"])
    with tempfile.TemporaryDirectory() as tmp:
        table = json.loads(Path(client.download_artifacts(summary["run_id"], "walk_forward/folds.json", tmp)).read_text())
    folds = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    children = client.search_runs([summary["experiment_id"]], f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    for fold in folds:
        child = next(c for c in children if int(c.data.tags["fold"]) == int(fold["fold"]))
        fold["seconds"] = round((child.info.end_time - child.info.start_time) / 1000, 1)
        if "train_seconds" in child.data.metrics:
            fold["lora_train_seconds"] = round(child.data.metrics["train_seconds"], 1)
    plot = Workspace.from_settings(settings).run_dir(summary["run_id"]) / "plots" / "walk_forward_test_macro_f1.png"
    out_png.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plot, out_png)
    pooled = {k: round(v, 4) for k, v in parent.data.metrics.items() if k.startswith("pooled_")}
    return {"folds": folds, "pooled": pooled, "verdict": parent.data.tags.get("verdict", "")}


def fold_stats(folds: list[dict], models: list[str]) -> dict:
    """Per model: mean and sample sd of test macro-F1 over folds, and folds where it is the best model."""
    out = {}
    for m in models:
        f1 = [f[f"{m}_test_macro_f1"] for f in folds]
        best = sum(1 for f in folds if f[f"{m}_test_macro_f1"] >= max(f[f"{o}_test_macro_f1"] for o in models))
        out[m] = {"mean_test_macro_f1": round(statistics.mean(f1), 4),
                  "sd_test_macro_f1": round(statistics.stdev(f1), 4) if len(f1) > 1 else 0.0, "folds_best": best}
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def inputs(prices_dir: Path) -> dict:
    files = {p.name: sha256(p) for p in sorted(prices_dir.glob("*_usd_daily.csv")) if p.name.split("_")[0] in ("eth", "btc")}
    shared = ROOT.parent / "shared" / "data" / "real" / "prices"
    same = {n: (shared / n).exists() and sha256(shared / n) == h for n, h in files.items()}
    return {"prices_dir": str(prices_dir), "sha256": files, "identical_to_shared_copy": same}


def markdown(report: dict) -> str:
    m, a, man, s = report["machine"], report["args"], report["dataset"], report["stats"]
    models = report["models"]
    lines = [
        "# Walk-forward on the shared price history (real ETH/BTC daily candles)", "",
        "```", report["command"], "```", "",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared with other work; 1-minute load {m['load_1m_at_start']} at start), "
        f"{m['os']}, Python {m['python']}, torch {m['torch']}, CPU only. Run {report['finished_utc']}, git {report['git_commit']}; "
        f"ingest {report['seconds']['ingest']} s, build-dataset {report['seconds']['build']} s, "
        f"walk-forward {report['seconds']['walk_forward']} s ({len(report['folds'])} folds, {a['concurrency']} at a time).", "",
        "## What ran", "",
        f"- Data: ETH and BTC daily candles {a['start']} .. {a['end']} (Binance spot; origin and license in "
        "`data/sample/README.md`; the bundled files are byte-identical to `shared/data/real/prices/`, sha256 in the JSON).",
        f"- `ingest-prices` (source `file`) then `build-dataset` (direction task, target ETH): {man['inputs']['prices']} price "
        f"partitions, chain `{man['chain_label']}`, {man['inputs']['posts']} posts. **Prices only**: the shared data hold no chain "
        "and no posts for these years and none are made up, so the chain and social features are empty (constant in the "
        "baselines' matrix, `n/a` in the prompts); every model sees the price features (returns, volatilities, the close's "
        "ratio to its 30-day mean, volume changes of ETH and BTC).",
        f"- `walk-forward`: from {a['first_test_day']}, every {a['step_days']} labelled days a fold retrains on every earlier day "
        f"(expanding window) minus its last {a['validation_days']} validation days (early stopping, the baseline choice) and "
        "an embargo on both sides, relabels with thresholds (terciles) from its own training days, and scores the next "
        f"{a['step_days']} days. Models: majority, persistence, logistic regression"
        + (f", and the tiny causal LoRA (built per fold from its training text, {a['epochs']:g} epoch(s), default settings "
           "otherwise)." if a["lora"] else " (no LoRA in this run)."), "",
        "## Per fold (test days)", "",
        "| fold | train | test | train rows | test rows | " + " | ".join(f"{x} F1 / MCC" for x in models) + " | s |",
        "|---:|---|---|---:|---:|" + "---:|" * len(models) + "---:|",
    ]
    for f in report["folds"]:
        cells = " | ".join(f"{f[f'{x}_test_macro_f1']:.3f} / {f[f'{x}_test_mcc']:+.3f}" for x in models)
        lines.append(f"| {f['fold']} | {f['train_start']} .. {f['train_end']} | {f['test_start']} .. {f['test_end']} | "
                     f"{f['rows_train']} | {f['rows_test']} | {cells} | {f['seconds']} |")
    p = report["pooled"]
    lines += ["", f"## Pooled over every fold's test days ({report['summary']['test_days']} days, "
                  f"{report['summary']['first_test_day']} .. {report['summary']['last_test_day']})", "",
              "| model | pooled test macro-F1 | pooled test MCC | mean F1 over folds (sd) | folds best |", "|---|---:|---:|---:|---:|"]
    for x in models:
        lines.append(f"| {x} | {p[f'pooled_{x}_test_macro_f1']:.3f} | {p[f'pooled_{x}_test_mcc']:+.3f} | "
                     f"{s[x]['mean_test_macro_f1']:.3f} ({s[x]['sd_test_macro_f1']:.3f}) | {s[x]['folds_best']} |")
    lines += ["", f"**Verdict** (the one rule of `tasks/evaluation/verdict.py` on the pooled test days): {report['verdict']}", "",
              f"![test macro-F1 per fold]({report['png']})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = " ".join([".venv/bin/python", "bench/walk_forward_shared.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    configure(args)
    info = machine()
    result = run(args)
    back = read_back(result["summary"], args.out.with_suffix(".png"))
    models = [x for x in MODELS if f"{x}_test_macro_f1" in back["folds"][0]]
    from tasks.tracking.tracker import git_commit

    report = {"command": command, "machine": info, "finished_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "git_commit": git_commit(), "args": {k: (str(v) if isinstance(v, Path | date) else v) for k, v in vars(args).items()},
              "inputs": inputs(args.prices_dir), "dataset": {k: result["manifest"][k] for k in
                                                            ("fingerprint", "chain_label", "inputs", "rows", "start", "end")},
              "seconds": result["seconds"], "summary": result["summary"], "models": models, "png": args.out.with_suffix(".png").name,
              **back, "stats": fold_stats(back["folds"], models)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
