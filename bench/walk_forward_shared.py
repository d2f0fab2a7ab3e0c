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
     --no-lora) LoRA per fold: the tiny causal model (--epochs), or with --model-kind encoder the MiniLM encoder
     (its defaults; --encoder-lora-layers N trains LoRA on its top N layers over cached lower ones, the CPU
     option), the folds fanned out --concurrency at a time.

It reads the parent MLflow run back (per-fold table, pooled metrics, verdict, the plot) and writes
<out>.md (the command and the machine first), <out>.json and <out>.png.

Usage:  .venv/bin/python bench/walk_forward_shared.py [--epochs 3] [--no-lora] [--concurrency 1]
            [--model-kind encoder [--encoder-lora-layers 2]] [--lora-folds N] [--out bench/results/walk_forward_shared]
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
    p.add_argument("--epochs", type=float, default=None, help="passes per fold (default: the kind's, causal 3, encoder 20 "
                   "with early stopping)")
    p.add_argument("--model-kind", choices=("causal", "encoder"), default="causal")
    p.add_argument("--encoder-lora-layers", type=int, default=None, help="encoder kind: LoRA on the top N layers only")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None, help="train.precision (default: auto)")
    p.add_argument("--no-lora", dest="lora", action="store_false")
    p.add_argument("--lora-folds", type=int, default=None,
                   help="LoRA on the last N folds only (default: every fold); the baselines always cover every fold")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--torch-threads", type=int, default=1,
                   help="OMP_NUM_THREADS for torch (default 1: on a busy shared machine 2 threads mostly wait)")
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
        "CHAINSIGNAL_TRAIN__MODEL_KIND": args.model_kind,
    })
    if args.model_kind == "causal":
        os.environ["CHAINSIGNAL_TRAIN__BASE_MODEL"] = "tiny-llama"
    if args.encoder_lora_layers is not None:
        os.environ["CHAINSIGNAL_TRAIN__ENCODER_LORA_LAYERS"] = str(args.encoder_lora_layers)
    if args.precision is not None:
        os.environ["CHAINSIGNAL_TRAIN__PRECISION"] = args.precision
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)  # read when torch loads, below
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # a busy shared machine: 20 s is short


def run(args: argparse.Namespace) -> dict:
    """ingest-prices, build-dataset, then walk-forward: once with LoRA over every fold, or (``--lora-folds N``)
    baselines over every fold and LoRA over the last N, whose folds are the same days (same first test day)."""
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
    common = dict(dataset=manifest["fingerprint"], step_days=args.step_days, validation_days=args.validation_days,
                  epochs=args.epochs, concurrency=args.concurrency)
    runs = {}
    if not args.lora or args.lora_folds is not None:
        t = time.perf_counter()
        runs["baselines"] = walk_forward(**common, first_test_day=args.first_test_day, lora=False)
        seconds["walk_forward_baselines"] = time.perf_counter() - t
    if args.lora:
        first = args.first_test_day
        if args.lora_folds is not None:
            starts = [f["test_start"] for f in read_back(runs["baselines"])["folds"]]
            first = date.fromisoformat(starts[max(0, len(starts) - args.lora_folds)])
        t = time.perf_counter()
        runs["lora"] = walk_forward(**common, first_test_day=first, lora=True)
        seconds["walk_forward_lora"] = time.perf_counter() - t
    return {"ingest": ingested, "manifest": manifest, "runs": runs, "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def read_back(summary: dict) -> dict:
    """A walk-forward parent run read back from MLflow: per-fold table (with each fold's seconds), pooled metrics, verdict."""
    import tempfile

    from mlflow.tracking import MlflowClient

    from tasks.core.settings import load_settings

    client = MlflowClient(load_settings().tracking_uri)
    parent = client.get_run(summary["run_id"])
    with tempfile.TemporaryDirectory() as tmp:
        table = json.loads(Path(client.download_artifacts(summary["run_id"], "walk_forward/folds.json", tmp)).read_text())
    folds = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    children = {int(c.data.tags["fold"]): c for c in
                client.search_runs([summary["experiment_id"]], f"tags.mlflow.parentRunId = '{summary['run_id']}'")}
    for fold in folds:
        child = children[int(fold["fold"])]
        fold["seconds"] = round((child.info.end_time - child.info.start_time) / 1000, 1)
        if "train_seconds" in child.data.metrics:
            fold["lora_train_seconds"] = round(child.data.metrics["train_seconds"], 1)
    pooled = {k: round(v, 4) for k, v in parent.data.metrics.items() if k.startswith("pooled_")}
    return {"run_id": summary["run_id"], "folds": folds, "pooled": pooled, "verdict": parent.data.tags.get("verdict", ""),
            "summary": summary}


def merge(runs: dict) -> tuple[list[dict], list[str]]:
    """One row per fold: the baselines from the run over every fold, LoRA's columns (and time) from the LoRA run
    by the fold's first test day; the LoRA run's baselines must equal the full run's on the same fold."""
    full = runs.get("baselines") or runs["lora"]
    rows = [dict(f) for f in full["folds"]]
    if "baselines" in runs and "lora" in runs:
        by_start = {f["test_start"]: f for f in runs["lora"]["folds"]}
        for row in rows:
            lora = by_start.get(row["test_start"])
            if lora is None:
                continue
            for b in ("majority", "persistence", "logistic"):
                if lora[f"{b}_test_macro_f1"] != row[f"{b}_test_macro_f1"]:
                    raise SystemExit(f"fold {row['test_start']}: {b} differs between the two runs: not the same fold")
            row.update({k: v for k, v in lora.items() if k.startswith("lora_")}, lora_fold_seconds=lora["seconds"])
    models = [m for m in MODELS if any(f"{m}_test_macro_f1" in r for r in rows)]
    return rows, models


def plot(rows: list[dict], models: list[str], path: Path) -> None:
    """Test macro-F1 per fold (x: the fold's first test day) for every model, from the saved per-fold rows."""
    from tasks.evaluation.walkforward import plot_per_fold

    series = {m: [(date.fromisoformat(r["test_start"]), r[f"{m}_test_macro_f1"]) for r in rows if f"{m}_test_macro_f1" in r]
              for m in models}
    plot_per_fold(series, path, "Walk-forward on real ETH/BTC daily prices: test macro-F1 per fold "
                  "(ETH next-day direction, 3 classes)")


def fold_stats(rows: list[dict], models: list[str]) -> dict:
    """Per model, over the folds it ran on: folds, mean and sample sd of test macro-F1, folds where it is the best."""
    out = {}
    for m in models:
        mine = [r for r in rows if f"{m}_test_macro_f1" in r]
        if not mine:
            continue
        f1 = [r[f"{m}_test_macro_f1"] for r in mine]
        best = sum(1 for r in mine if r[f"{m}_test_macro_f1"] >= max(r[f"{o}_test_macro_f1"] for o in models if f"{o}_test_macro_f1" in r))
        out[m] = {"folds": len(mine), "mean_test_macro_f1": round(statistics.mean(f1), 4),
                  "sd_test_macro_f1": round(statistics.stdev(f1), 4) if len(f1) > 1 else 0.0, "folds_best": best}
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def inputs(prices_dir: Path) -> dict:
    files = {p.name: sha256(p) for p in sorted(prices_dir.glob("*_usd_daily.csv")) if p.name.split("_")[0] in ("eth", "btc")}
    shared = ROOT.parent / "shared" / "data" / "real" / "prices"
    same = {n: (shared / n).exists() and sha256(shared / n) == h for n, h in files.items()}
    return {"prices_dir": str(prices_dir), "sha256": files, "identical_to_shared_copy": same}




def _pooled_table(run: dict, models: list[str], stats: dict) -> list[str]:
    p, sm = run["pooled"], run["summary"]
    lines = [f"{len(run['folds'])} folds, {sm['test_days']} test days, {sm['first_test_day']} .. {sm['last_test_day']}:", "",
             "| model | pooled test macro-F1 | pooled test MCC | mean F1 over folds (sd) | folds best |", "|---|---:|---:|---:|---:|"]
    for x in models:
        if f"pooled_{x}_test_macro_f1" in p:
            lines.append(f"| {x} | {p[f'pooled_{x}_test_macro_f1']:.3f} | {p[f'pooled_{x}_test_mcc']:+.3f} | "
                         f"{stats[x]['mean_test_macro_f1']:.3f} ({stats[x]['sd_test_macro_f1']:.3f}) | {stats[x]['folds_best']} |")
    return lines


def _rel(path: str) -> str:
    """A path under the repository as the reader's relative path (the data folder the run used)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def _what_ran(report: dict) -> list[str]:
    a, man, runs = report["args"], report["dataset"], report["runs"]
    scope = ("no LoRA in this run" if not a["lora"] else "LoRA on every fold" if "baselines" not in runs
             else f"LoRA on the last {len(runs['lora']['folds'])} of {len(report['folds'])} folds only (CPU time on a shared "
             "2-core machine; `--lora-folds` chose it), the baselines on every fold")
    from tasks.core.settings import TRAIN_KIND_DEFAULTS

    kind = a.get("model_kind", "causal")
    epochs = a["epochs"] if a["epochs"] is not None else TRAIN_KIND_DEFAULTS[kind]["epochs"]
    layers = f", LoRA on its top {a['encoder_lora_layers']} layers" if a.get("encoder_lora_layers") else ""
    if a.get("precision") == "bf16":
        layers += ", in bfloat16 autocast"
    model = ("the tiny causal LoRA (the tiny-llama built per fold from its training text" if kind == "causal"
             else f"the encoder LoRA (MiniLM{layers}")
    lora = f", and {model}, at most {epochs:g} epochs, every other training setting at its default)" if a["lora"] else ""
    return [
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
        f"{a['step_days']} days (the last fold: the days left). Models: majority, persistence, logistic regression{lora}. "
        f"{scope[0].upper() + scope[1:]}.", ""]


def markdown(report: dict) -> str:
    m, a, rows, models, runs = report["machine"], report["args"], report["folds"], report["models"], report["runs"]
    share_head = " | LoRA's top class share" if "lora" in models else ""
    lines = [
        "# Walk-forward on the shared price history (real ETH/BTC daily candles)", "",
        "```", report["command"], "```", "",
        f"Machine: {m['cpu']}, {m['cores']} cores shared with other work (1-minute load {m['load_1m_at_start']} at start), "
        f"{m['os']}, Python {m['python']}, torch {m['torch']} on {a['torch_threads']} thread(s), CPU only. Finished "
        f"{report['finished_utc']}, git {report['git_commit']}. Seconds: "
        + ", ".join(f"{k} {v}" for k, v in report["seconds"].items()) + f"; folds {a['concurrency']} at a time.", "",
        *_what_ran(report),
        "## Per fold (test days): macro-F1 / MCC", "",
        "| fold | train | test | train rows | test rows | " + " | ".join(models) + share_head + " | s |",
        "|---:|---|---|---:|---:|" + "---:|" * (len(models) + bool(share_head)) + "---:|",
    ]
    for f in rows:
        cells = " | ".join(f"{f[f'{x}_test_macro_f1']:.3f} / {f[f'{x}_test_mcc']:+.3f}" if f"{x}_test_macro_f1" in f else "-"
                           for x in models)
        if share_head:
            cells += f" | {f['lora_test_top_share']:.0%}" if "lora_test_top_share" in f else " | -"
        lines.append(f"| {f['fold']} | {f['train_start']} .. {f['train_end']} | {f['test_start']} .. {f['test_end']} | "
                     f"{f['rows_train']} | {f['rows_test']} | {cells} | {f['seconds'] + f.get('lora_fold_seconds', 0):.1f} |")
    lines += ["", "## Pooled test days", ""]
    if "baselines" in runs:
        lines += ["Baselines, every fold:", ""] + _pooled_table(runs["baselines"], models, report["stats"]) + [""]
    if "lora" in runs:
        lines += ["LoRA run (LoRA and the baselines on the same folds):", ""]
        lines += _pooled_table(runs["lora"], models, fold_stats(runs["lora"]["folds"], models))
        lines += ["", f"**Verdict** (the one rule of `tasks/evaluation/verdict.py` on the LoRA run's pooled test days, paired "
                      f"bootstrap 95% CIs): {runs['lora']['verdict']}", ""]
    lines += [f"![test macro-F1 per fold]({report['png']})", "",
              "Reading it: the pooled macro-F1 scores every fold's test days as one set, so a model that predicts mostly one "
              "class in each fold, a different class in different folds, scores higher pooled than its per-fold mean; MCC, "
              "its interval in the verdict, the per-fold mean and the top-class share are the figures that show it. "
              f"Each fold is a child run of the walk-forward run in MLflow (`{_rel(a['data_dir'])}/mlflow.db`).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = " ".join([".venv/bin/python", "bench/walk_forward_shared.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    configure(args)
    info = machine()
    result = run(args)
    runs = {k: read_back(v) for k, v in result["runs"].items()}
    rows, models = merge(runs)
    png = args.out.with_suffix(".png")
    plot(rows, models, png)
    from tasks.tracking.tracker import git_commit

    report = {"command": command, "machine": info, "finished_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "git_commit": git_commit(), "args": {k: (str(v) if isinstance(v, Path | date) else v) for k, v in vars(args).items()},
              "inputs": inputs(args.prices_dir), "dataset": {k: result["manifest"][k] for k in
                                                            ("fingerprint", "chain_label", "inputs", "rows", "start", "end")},
              "seconds": result["seconds"], "models": models, "png": png.name, "folds": rows, "stats": fold_stats(rows, models),
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
