"""Walk-forward of the encoder kind (MiniLM + LoRA, its defaults) on the shared price history, trained on a GPU.

Not a test. The same 23 folds as bench/walk_forward_shared.py (2018-01 .. 2024-06, first test day 2019-01-01,
90 test and 90 validation days per fold, expanding window) through the product's own walk-forward pieces, in
three steps, because the GPU image has torch, transformers and peft but no polars, prefect or mlflow:

  1. ``prepare`` (here): ingest-prices and build-dataset with the product's flows into a scratch data dir, then
     per fold ``tasks.evaluation.walkforward``'s fold_frame (labels from the fold's own training days),
     fold_baselines and fold_records; one JSON per fold under --work (the records, the truth, the baselines'
     predictions).
  2. ``train`` (on the device, --part k/n per process): per fold, the walk-forward flow's own ``fold_lora``
     (tasks/evaluation/foldmodel.py, no polars): the encoder trained on the fold's training records, selected on
     its validation records, scored on validation and test; one JSON of predictions a fold.
  3. ``report`` (here): the folds back into ``FoldResult``s; ``pooled_metrics``, ``pooled_verdict`` (the product's
     one rule) and ``plot_fold_f1``; writes <out>.md, <out>.json and <out>.png.

    .venv/bin/python bench/walk_forward_encoder_gpu.py prepare --work var/gpu/wf
    # device, var/gpu carried (see bench/sweep_encoder_gpu.sh for the wheels and the fp16 MiniLM):
    python bench/walk_forward_encoder_gpu.py train --work var/gpu/wf --base-model /tmp/m32 --part k/8 --out-dir /tmp/wfo
    .venv/bin/python bench/walk_forward_encoder_gpu.py report --work var/gpu/wf --preds <the device's files>
    .venv/bin/python bench/walk_forward_encoder_gpu.py compare --runs defaults=<folder> bf16=<folder> ... --alone ...

bench/walk_forward_encoder_gpu.sh runs step 2 on the device (8 processes, one archive back).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def prepare(args: argparse.Namespace) -> None:
    import polars as pl
    import walk_forward_shared as wfs  # the same data, settings and fold parameters as the causal walk-forward

    from flows.build_dataset import build_dataset
    from flows.ingest_prices import ingest_prices
    from tasks.core.settings import load_settings
    from tasks.core.storage import Workspace
    from tasks.dataset.prompter import Prompter
    from tasks.evaluation.folds import walk_forward_folds
    from tasks.evaluation.walkforward import fold_baselines, fold_frame, fold_records, new_fold_result

    shared = wfs.parse_args(["--data-dir", str(args.data_dir)])
    wfs.configure(shared)
    ingest_prices(shared.start, shared.end)
    manifest = build_dataset(shared.start, shared.end)
    settings = load_settings()
    version = Workspace.from_settings(settings).dataset_version(settings.dataset.name, manifest["fingerprint"])
    man = version.manifest
    features = pl.read_parquet(version.features_path)
    days = features.filter(pl.col("next_day_return").is_not_null())["date"].to_list()
    folds = walk_forward_folds(days, first_test_day=shared.first_test_day, step_days=shared.step_days,
                               validation_days=shared.validation_days, embargo_days=man.embargo_days)
    prompter = Prompter.load()
    args.work.mkdir(parents=True, exist_ok=True)
    for fold in folds:
        frame, thresholds = fold_frame(features, fold, settings.dataset)
        result = new_fold_result(frame, fold, thresholds)
        records = fold_records(frame, prompter, list(settings.prices.assets), man.chain_label)
        slim = {s: [{"date": str(r["date"]), "input": r["input"], "output": r["output"]} for r in rs] for s, rs in records.items()}
        (args.work / f"fold-{fold.index:02d}.json").write_text(json.dumps({
            "fold": fold.as_dict(), "thresholds": thresholds, "rows": result.rows, "truth": result.truth,
            "baselines": fold_baselines(frame, man.numeric_features, settings.dataset.seed), "records": slim}))
    (args.work / "dataset.json").write_text(json.dumps({"fingerprint": man.fingerprint, "folds": len(folds),
                                                        "seed": settings.dataset.seed}))
    print(f"{len(folds)} folds written to {args.work}")


def train(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tasks.core.settings import TrainSettings
    from tasks.dataset.prompter import Prompter
    from tasks.evaluation.foldmodel import fold_lora

    k, n = (int(x) for x in args.part.split("/"))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    prompter = Prompter.load()
    paths = sorted(args.work.glob("fold-*.json"))
    if args.folds:
        paths = [args.work / f"fold-{i:02d}.json" for i in args.folds]
    for path in paths[k::n]:
        fold = json.loads(path.read_text())
        cfg = TrainSettings(model_kind="encoder", **args.config, **({"base_model": args.base_model} if args.base_model else {}))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            preds, result = fold_lora(cfg, fold["records"], prompter, lambda name: Path(tmp) / name, Path(tmp) / "adapter")
            seconds = time.perf_counter() - t0
        out = {"fold": fold["fold"]["fold"], "lora": preds, "seconds": round(seconds, 1), "device": result.device,
               "steps": result.steps, "selected_step": result.selected_step, "selection_score": result.selection_score,
               "train_rows": len(fold["records"]["train"]), "learning_rate": cfg.learning_rate,
               "pooling": cfg.encoder_pooling, "epochs": cfg.epochs, "seed": cfg.seed, "batch_size": cfg.batch_size,
               "encoder_lora_layers": cfg.encoder_lora_layers,
               "precision": cfg.precision}
        (args.out_dir / f"preds-{path.stem}.json").write_text(json.dumps(out))
        print(json.dumps({k: v for k, v in out.items() if k != "lora"}), flush=True)


SETTINGS = ("learning_rate", "pooling", "epochs", "seed", "batch_size", "encoder_lora_layers", "precision")  # recorded per fold


def load_results(work: Path, pred_files: list[Path]) -> tuple[dict[str, Any], list[Any], list[dict[str, Any]]]:
    """The prepared folds with one run's predictions as ``FoldResult``s: (dataset meta, results, the device's records)."""
    from tasks.evaluation.folds import Fold
    from tasks.evaluation.walkforward import FoldResult

    meta = json.loads((work / "dataset.json").read_text())
    preds = {rec["fold"]: rec for rec in (json.loads(p.read_text()) for p in pred_files)}
    missing = [i for i in range(meta["folds"]) if i not in preds]
    if missing:
        raise SystemExit(f"no predictions for folds {missing}")
    results, trained = [], []
    for i in range(meta["folds"]):
        f = json.loads((work / f"fold-{i:02d}.json").read_text())
        d = f["fold"]
        fold = Fold(d["fold"], (date.fromisoformat(d["train_start"]), date.fromisoformat(d["train_end"])),
                    (date.fromisoformat(d["validation_start"]), date.fromisoformat(d["validation_end"])),
                    (date.fromisoformat(d["test_start"]), date.fromisoformat(d["test_end"])))
        results.append(FoldResult(fold, f["thresholds"], f["rows"], f["truth"], {**f["baselines"], "lora": preds[i]["lora"]}))
        trained.append(preds[i])
    return meta, results, trained


def report(args: argparse.Namespace) -> None:
    from tasks.evaluation.metrics import bootstrap_mcc, score
    from tasks.evaluation.walkforward import plot_fold_f1, pooled, pooled_metrics, pooled_verdict

    meta, results, trained = load_results(args.work, args.preds)
    metrics = pooled_metrics(results)
    verdict = pooled_verdict(results, meta["seed"]).text
    _, mcc_lo, mcc_hi = bootstrap_mcc(*pooled(results, "lora", "test"), seed=meta["seed"])
    plot_fold_f1(results, args.out.with_suffix(".png"))
    models = list(results[0].preds)
    per_fold = [{"fold": r.fold.index, "test_start": r.fold.test[0].isoformat(), "train_rows": r.rows["train"],
                 "lora_seconds": t["seconds"], "lora_steps": t["steps"], "lora_selected_step": t["selected_step"],
                 **{f"{m}_test_macro_f1": round(score(r.truth["test"], r.preds[m]["test"]).macro_f1, 4) for m in models},
                 "lora_test_top_share": round(max(score(r.truth["test"], r.preds["lora"]["test"]).predicted_share.values()), 3)}
                for r, t in zip(results, trained, strict=True)]
    out = {"command": "python bench/walk_forward_encoder_gpu.py prepare / train / report", "dataset": meta["fingerprint"],
           "device": trained[0]["device"], "settings": {k: trained[0][k] for k in SETTINGS if k in trained[0]},
           "pooled": {k: round(v, 4) for k, v in metrics.items()}, "lora_test_mcc_ci95": [round(mcc_lo, 4), round(mcc_hi, 4)],
           "verdict": verdict, "processes": args.processes, "config": args.config, "folds": per_fold}
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(out, models, args.out.with_suffix(".png").name))
    print(verdict)


def compare(args: argparse.Namespace) -> None:
    """Several device runs of the same folds side by side: pooled test macro-F1, MCC and its CI, LoRA minus the
    logistic baseline with its paired CI, the product's verdict word, and the run's seconds."""
    from tasks.evaluation.metrics import bootstrap_f1_difference, bootstrap_mcc
    from tasks.evaluation.walkforward import pooled, pooled_metrics, pooled_verdict

    rows = []
    for spec in args.runs:
        name, _, folder = spec.partition("=")
        meta, results, trained = load_results(args.work, sorted(Path(folder).glob("preds-*.json")))
        metrics = pooled_metrics(results)
        truth, lora = pooled(results, "lora", "test")
        _, mlo, mhi = bootstrap_mcc(truth, lora, seed=meta["seed"])
        diff, dlo, dhi = bootstrap_f1_difference(truth, lora, pooled(results, "logistic", "test")[1], seed=meta["seed"])
        settings = {k: trained[0][k] for k in SETTINGS if k in trained[0]}
        rows.append({"run": name, "settings": settings, "lora_f1": round(metrics["pooled_lora_test_macro_f1"], 4),
                     "logistic_f1": round(metrics["pooled_logistic_test_macro_f1"], 4),
                     "lora_mcc": round(metrics["pooled_lora_test_mcc"], 4), "lora_mcc_ci95": [round(mlo, 4), round(mhi, 4)],
                     "minus_logistic": round(diff, 4), "minus_logistic_ci95": [round(dlo, 4), round(dhi, 4)],
                     "verdict": pooled_verdict(results, meta["seed"]).text.split(" on ")[0],
                     "fold_seconds": [min(t["seconds"] for t in trained), max(t["seconds"] for t in trained)],
                     "seconds_sum": round(sum(t["seconds"] for t in trained), 1)})
    f1s = [r["lora_f1"] for r in rows if r["settings"].get("encoder_lora_layers", 0) == 0
           and r["settings"].get("precision", "auto") == "auto" and r["settings"].get("batch_size") == 8]
    out = {"command": "python bench/walk_forward_encoder_gpu.py compare --runs " + " ".join(args.runs),
           "dataset": meta["fingerprint"], "runs": rows, "defaults_f1_mean": round(sum(f1s) / len(f1s), 4) if f1s else None}
    lines = ["# The encoder's walk-forward on the GPU: seeds, precision and LoRA layers side by side", "",
             f"Command: `.venv/bin/python bench/walk_forward_encoder_gpu.py compare --runs {' '.join(args.runs)}` over the "
             f"device's predictions of the same 23 folds (dataset `{meta['fingerprint']}`, 2,005 pooled test days; "
             "bench/walk_forward_encoder_gpu.sh ran each, 8 processes sharing one H200).", "",
             "| run | settings over the defaults | LoRA macro-F1 | logistic | LoRA - logistic [95% CI] | LoRA MCC [95% CI] | "
             "verdict | s a fold | s in all |", "|---|---|---:|---:|---|---|---|---|---:|"]
    for r in rows:
        extra = {k: v for k, v in r["settings"].items() if k in ("seed", "batch_size", "encoder_lora_layers", "precision")}
        lines.append(f"| {r['run']} | {extra} | {r['lora_f1']:.3f} | {r['logistic_f1']:.3f} | {r['minus_logistic']:+.3f} "
                     f"[{r['minus_logistic_ci95'][0]:+.3f}, {r['minus_logistic_ci95'][1]:+.3f}] | {r['lora_mcc']:+.3f} "
                     f"[{r['lora_mcc_ci95'][0]:+.3f}, {r['lora_mcc_ci95'][1]:+.3f}] | {r['verdict']} | "
                     f"{r['fold_seconds'][0]:.0f}-{r['fold_seconds'][1]:.0f} | {r['seconds_sum']:.0f} |")
    if f1s:
        lines += ["", f"The defaults (batch 8, every layer, fp32) over {len(f1s)} seed(s): mean pooled macro-F1 "
                  f"{out['defaults_f1_mean']:.3f} (range {min(f1s):.3f}-{max(f1s):.3f})."]
    if args.alone:
        alone = []
        for spec in args.alone:
            name, _, folder = spec.partition("=")
            rec = json.loads(next(Path(folder).glob("preds-*.json")).read_text())
            alone.append({"run": name, **{k: v for k, v in rec.items() if k != "lora"}})
        out["alone"] = alone
        lines += ["", f"One fold alone on the GPU (fold {alone[0]['fold']}, {alone[0]['train_rows']:,} training days, one process, "
                  "training with its per-evaluation selection and the scoring of validation and test):", "",
                  "| run | LoRA layers | precision | s | steps | kept step | validation macro-F1 |", "|---|---|---|---:|---:|---:|---:|"]
        lines += [f"| {a['run']} | {a['encoder_lora_layers'] or 'all'} | {a['precision']} | {a['seconds']:.1f} | {a['steps']} | "
                  f"{a['selected_step']} | {a['selection_score']:.3f} |" for a in alone]
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[4:]))


def markdown(out: dict[str, Any], models: list[str], plot: str) -> str:
    p = out["pooled"]
    config = f" --config '{json.dumps(out['config'])}'" if out.get("config") else ""
    secs = [f["lora_seconds"] for f in out["folds"]]
    lines = ["# Walk-forward of the encoder kind on the shared prices (2019-01 .. 2024-06 test days)", "",
             f"Commands: `.venv/bin/python bench/walk_forward_encoder_gpu.py prepare --work var/gpu/wf` here; on the device "
             f"(`{out['device']}`, one H200), {out['processes']} processes side by side (bench/walk_forward_encoder_gpu.sh): "
             f"`python bench/walk_forward_encoder_gpu.py train --work var/gpu/wf --base-model /tmp/m32 --part k/{out['processes']}"
             f"{config}`; then `report` here. Dataset "
             f"`{out['dataset']}`; encoder settings {out['settings']}.", "",
             f"**Verdict (the product's rule, pooled test days):** {out['verdict']}", "",
             "| model | pooled test macro-F1 | pooled test MCC |", "|---|---:|---:|"]
    lines += [f"| {m} | {p[f'pooled_{m}_test_macro_f1']:.3f} | {p[f'pooled_{m}_test_mcc']:+.3f} |" for m in models]
    lo, hi = out["lora_test_mcc_ci95"]
    lines += ["", f"The encoder's pooled test MCC 95% CI: [{lo:+.3f}, {hi:+.3f}] (paired bootstrap over the 2,005 days).", "",
              f"Per fold: the encoder trained and scored in {min(secs):.0f}-{max(secs):.0f} s ({out['processes']} processes "
              "sharing the GPU), "
              f"{sum(secs):.0f} s in all; the largest share of one class it predicted in a fold: "
              f"{max(f['lora_test_top_share'] for f in out['folds']):.0%}.", "",
              "| fold | first test day | training days | steps | kept step | s | " + " | ".join(models) + " | lora top share |",
              "|---:|---|---:|---:|---:|---:|" + "---:|" * len(models) + "---:|"]
    for f in out["folds"]:
        lines.append(f"| {f['fold']} | {f['test_start']} | {f['train_rows']} | {f['lora_steps']} | {f['lora_selected_step']} | "
                     f"{f['lora_seconds']:.0f} | " + " | ".join(f"{f[f'{m}_test_macro_f1']:.3f}" for m in models)
                     + f" | {f['lora_test_top_share']:.0%} |")
    lines += ["", f"![test macro-F1 per fold]({plot})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="build the dataset and write one JSON per fold (here)")
    p.add_argument("--work", type=Path, default=ROOT / "var" / "gpu" / "wf")
    p.add_argument("--data-dir", type=Path, default=ROOT / "var" / "bench" / "walk_forward_encoder")
    t = sub.add_parser("train", help="train and score the encoder on each fold of this part (the device)")
    t.add_argument("--work", type=Path, default=ROOT / "var" / "gpu" / "wf")
    t.add_argument("--base-model", default=None, help="a local copy of the encoder (default: the kind's, minilm)")
    t.add_argument("--part", default="0/1", help="k/n: every n-th fold from the k-th")
    t.add_argument("--out-dir", type=Path, required=True)
    t.add_argument("--config", type=json.loads, default={}, help="train settings over the kind's defaults (JSON)")
    t.add_argument("--folds", type=int, nargs="*", default=[], help="only these folds (default: all; --part splits them)")
    r = sub.add_parser("report", help="pool the folds, the verdict, the table and the plot (here)")
    r.add_argument("--work", type=Path, default=ROOT / "var" / "gpu" / "wf")
    r.add_argument("--preds", type=Path, nargs="+", required=True)
    r.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "walk_forward_encoder")
    r.add_argument("--processes", type=int, default=8, help="how many train processes shared the GPU (for the report)")
    r.add_argument("--config", type=json.loads, default={}, help="the train settings the device was given (JSON; for the report)")
    c = sub.add_parser("compare", help="several runs' pooled figures side by side (here)")
    c.add_argument("--work", type=Path, default=ROOT / "var" / "gpu" / "wf")
    c.add_argument("--runs", nargs="+", required=True, help="name=folder of a run's preds-*.json files")
    c.add_argument("--alone", nargs="*", default=[], help="name=folder of a one-fold run timed alone on the device")
    c.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "walk_forward_encoder_runs")
    args = ap.parse_args(argv)
    {"prepare": prepare, "train": train, "report": report, "compare": compare}[args.step](args)


if __name__ == "__main__":
    main()
