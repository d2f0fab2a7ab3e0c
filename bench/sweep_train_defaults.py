"""The sweep behind each model kind's training defaults (tasks/core/settings.py TRAIN_KIND_DEFAULTS).

Trains every configuration of a small grid on a built dataset version's train split, keeps the weights of
the best validation evaluation (the product's own selection, tasks/training/selection.py), reloads the
saved adapter and scores the validation split with the product's scorer: macro-F1 and the predicted class
shares (a run that predicts one class for >= 90% of the days is marked collapsed). Writes a table
(markdown + json) with the command and the machine; the defaults are the best row that does not collapse.

Build the datasets first with the product (real shared data, no network):

    # sentiment task: real tweets (2016-01-01 .. 2021-03-08), the product's chronological split
    CHAINSIGNAL_STORAGE__DATA_DIR=var/sweep CHAINSIGNAL_TWEETS__SOURCES='["file"]' \\
      CHAINSIGNAL_TWEETS__ACCEPT_EMPTY_DAYS=true chainsignal ingest --start 2016-01-01 --end 2021-03-08 --only tweets
    CHAINSIGNAL_STORAGE__DATA_DIR=var/sweep CHAINSIGNAL_PRICES__FILE_DIR=../shared/data/real/prices \\
      chainsignal ingest --start 2016-01-01 --end 2021-03-08 --only prices
    CHAINSIGNAL_STORAGE__DATA_DIR=var/sweep CHAINSIGNAL_DATASET__NAME=sentiment CHAINSIGNAL_DATASET__START_DATE=2016-01-01 \\
      CHAINSIGNAL_DATASET__END_DATE=2021-03-08 chainsignal build-dataset

then:  python bench/sweep_train_defaults.py --dataset var/sweep/datasets/sentiment/<fingerprint> --kind encoder
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRIDS: dict[str, dict[str, list[Any]]] = {
    "encoder": {"learning_rate": [1e-3, 2e-3, 5e-3], "target_modules": [["query", "value"], ["query", "key", "value", "dense"]],
                "lora_r": [8], "epochs": [15.0]},
    "causal": {"learning_rate": [1e-3, 3e-3, 1e-2], "target_modules": [["q_proj", "v_proj"]], "lora_r": [8], "epochs": [3.0]},
}


def _configs(kind: str, only: int | None) -> list[dict[str, Any]]:
    grid = GRIDS[kind]
    rows = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    return rows[:only] if only else rows


def _merge(paths: list[Path]) -> list[dict[str, Any]]:
    """The parts' rows in order; a configuration run again with the same seed on the same device keeps its last row
    (a rerun is one more look at one run, not another seed)."""
    rows: dict[str, dict[str, Any]] = {}
    for p in paths:
        for row in json.loads(p.read_text())["rows"]:
            key = json.dumps({**_knobs(row, "encoder"), "seed": row.get("seed", 42), "task": row.get("task")}, sort_keys=True)
            rows.pop(key, None)
            rows[key] = row
    return list(rows.values())


def run_one(kind: str, overrides: dict[str, Any], dataset: Path, work: Path) -> dict[str, Any]:
    from tasks.core.manifests import DatasetManifest
    from tasks.core.settings import TrainSettings
    from tasks.evaluation.scoring import load_scorer
    from tasks.training.selection import macro_f1

    # the version folder read without tasks.core.storage (polars): the GPU image has no polars
    manifest = DatasetManifest.from_dict(json.loads((dataset / "manifest.json").read_text()))
    train, val = (json.loads((dataset / f"{split}.json").read_text()) for split in ("train", "validation"))
    cfg = TrainSettings(model_kind=kind, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    out = work / f"adapter-{abs(hash(json.dumps(overrides, sort_keys=True)))}"
    t0 = time.perf_counter()
    if kind == "encoder":
        from tasks.training.encoder import train_encoder_adapter

        result = train_encoder_adapter(cfg, train, val, out, manifest.kind)
        base = cfg.base_model
    else:
        from tasks.dataset.prompter import Prompter
        from tasks.training.tinymodel import resolve_base_model
        from tasks.training.train import train_lora_adapter

        prompter = Prompter.load()
        corpus = [prompter.prompt(r["instruction"], r["input"]) + r["output"] for r in train] + list(prompter.labels)
        base, _ = resolve_base_model(cfg, lambda name: work / name, corpus)
        result = train_lora_adapter(cfg, base, train, val, out)
    seconds = time.perf_counter() - t0
    scorer = load_scorer(out, base, cfg.cutoff_len, model_type=kind, kind="class")
    preds, _ = scorer.labels(val)
    shares = {lab: round(n / len(preds), 3) for lab, n in sorted(Counter(preds).items())}
    resolved = {"learning_rate": cfg.learning_rate, "target_modules": list(cfg.target_modules), "lora_r": cfg.lora_r,
                "epochs": cfg.epochs, "batch_size": cfg.batch_size, "early_stopping_patience": cfg.early_stopping_patience,
                "warmup_steps": cfg.warmup_steps, "seed": cfg.seed,
                **({"encoder_pooling": cfg.encoder_pooling, "encoder_lora_layers": cfg.encoder_lora_layers,
                    "precision": "bf16" if cfg.precision == "bf16" else "fp32"} if kind == "encoder" else {})}
    return {**overrides, **resolved, "steps": result.steps, "selected_step": result.selected_step,
            "device": result.device,
            "validation_macro_f1": round(macro_f1([r["output"] for r in val], preds), 4),
            "validation_shares": shares, "collapsed": max(shares.values()) >= 0.9, "train_seconds": round(seconds, 1),
            "rows_train": len(train), "rows_validation": len(val), "task": manifest.task, "dataset": manifest.fingerprint,
            "host": _host()}


def write_table(rows: list[dict[str, Any]], kind: str, out: Path, command: str) -> None:
    from tasks.core.settings import TrainSettings
    lines = [f"# Training defaults sweep: {kind} kind, {rows[0]['task']} task", "",
             f"Commands (each row is one run of one of them): `{command}`", "",
             f"Ran on: {'; '.join(dict.fromkeys(r.get('host', 'not recorded in its rows') for r in rows))}. Written "
             f"{time.strftime('%Y-%m-%d')}; each row's device column says where it trained.", "",
             f"Dataset: task `{rows[0]['task']}`, version `{rows[0]['dataset']}`, {rows[0]['rows_train']} training and "
             f"{rows[0]['rows_validation']} validation rows (the product's chronological split). Each run keeps its best "
             "validation evaluation (train.select_by) with early stopping (train.early_stopping_patience) and class "
             "balance; the figures are the saved adapter reloaded and scored by the product's scorer.", "",
             "| learning rate | LoRA targets | LoRA layers | r | batch | pooling | warm-up | patience | max epochs | seed | steps run | "
             "kept step | validation macro-F1 | validation predicted shares | collapsed | device | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    current = TrainSettings(model_kind=kind)
    keys = ("learning_rate", "lora_r", "epochs", "batch_size", "early_stopping_patience")

    def is_default(r: dict[str, Any]) -> bool:
        return (all(r.get(k) == getattr(current, k) for k in keys) and tuple(r.get("target_modules", ())) == current.target_modules
                and r.get("encoder_pooling", "cls") == current.encoder_pooling and r.get("warmup_steps", 2) == current.warmup_steps
                and r.get("encoder_lora_layers", 0) == getattr(current, "encoder_lora_layers", 0)
                and r.get("precision", "fp32") == ("bf16" if current.precision == "bf16" else "fp32")
                and r.get("seed", 42) == current.seed)

    for r in rows:
        mark = " **(the defaults)**" if is_default(r) else ""
        knobs = {k: r.get(k, TrainSettings.model_fields[k].default) for k in ("batch_size", "early_stopping_patience")}
        pooling = r.get("encoder_pooling", "cls") if kind == "encoder" else "-"
        layers = f"top {r['encoder_lora_layers']}" if r.get("encoder_lora_layers") else "all"
        if r.get("precision", "fp32") != "fp32":
            layers += f", {r['precision']}"
        lines.append(f"| {r['learning_rate']:g}{mark} | {','.join(r.get('target_modules', []))} | {layers} | {r.get('lora_r', 8)} | "
                     f"{knobs['batch_size']} | {pooling} | {r.get('warmup_steps', 2)} | {knobs['early_stopping_patience']} | "
                     f"{r['epochs']:g} | {r.get('seed', 42)} | "
                     f"{r['steps']} | {r['selected_step']} | {r['validation_macro_f1']:.3f} | "
                     f"{' '.join(f'{k[:3]} {v:.0%}' for k, v in r['validation_shares'].items())} | "
                     f"{'yes' if r['collapsed'] else 'no'} | {r.get('device', 'cpu')} | {r['train_seconds']:.0f} |")
    lines += _by_configuration(rows, kind)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "kind": kind, "rows": rows}, indent=2) + "\n")


KNOBS = ("learning_rate", "target_modules", "lora_r", "batch_size", "encoder_pooling", "encoder_lora_layers", "precision",
         "warmup_steps", "early_stopping_patience", "epochs", "device")
ENCODER_KNOBS = ("encoder_pooling", "encoder_lora_layers", "precision")  # the encoder trained in fp32 before the setting reached it
UNSET = {"batch_size": 16, "warmup_steps": 2, "early_stopping_patience": 3, "device": "cpu", "encoder_lora_layers": 0,
         "precision": "fp32"}  # rows written before these were recorded


def _knobs(row: dict[str, Any], kind: str) -> dict[str, Any]:
    """A row's configuration (the knobs, those it lacks at the value they had before they were recorded), seed aside."""
    return {k: row.get(k, UNSET.get(k)) for k in KNOBS if kind == "encoder" or k not in ENCODER_KNOBS}


def _by_configuration(rows: list[dict[str, Any]], kind: str) -> list[str]:
    """One line per configuration over its seeds (mean, lowest, runs that collapsed), and the best configuration
    whose every seed learned (none collapsed): the one the defaults should come from."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        key = _knobs(r, kind)
        groups.setdefault(json.dumps(key, sort_keys=True), []).append(r)
    lines = ["", "Per configuration, over its seeds:", "",
             "| configuration | seeds | mean validation macro-F1 | lowest | collapsed runs |", "|---|---:|---:|---:|---:|"]
    summary = []
    for key, runs in groups.items():
        f1 = [r["validation_macro_f1"] for r in runs]
        summary.append((sum(f1) / len(f1), min(f1), sum(r["collapsed"] for r in runs), len(runs), json.loads(key)))
    varying = [k for k in KNOBS if len({json.dumps(t[4].get(k)) for t in summary}) > 1]  # the knobs the sweep moved
    for mean, low, collapsed, n, key in sorted(summary, key=lambda t: -t[0]):
        text = ", ".join(f"{k} {','.join(key[k]) if isinstance(key[k], list) else key[k]}" for k in varying if k in key) or "-"
        lines.append(f"| {text} | {n} | {mean:.3f} | {low:.3f} | {collapsed} |")
    most = max(t[3] for t in summary)  # configurations run with the most seeds first: one seed's figure is not a choice
    learned = [t for t in summary if t[2] == 0 and t[3] == most] or [t for t in summary if t[2] == 0]
    if learned:
        mean, low, _, n, key = max(learned, key=lambda t: t[0])
        lines += ["", f"Best configuration with no collapsed run: {key} ({n} seeds): mean validation macro-F1 {mean:.3f}, "
                  f"lowest {low:.3f}."]
    return lines


def _host() -> str:
    """Where a row ran, recorded with it (a merge writes its table elsewhere)."""
    import torch

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores{gpu}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, help="a built dataset version's folder (not needed with --merge)")
    ap.add_argument("--kind", choices=sorted(GRIDS), default="encoder")
    ap.add_argument("--only", type=int, default=None, help="run the first N configurations of the grid")
    ap.add_argument("--out", type=Path, default=None, help="results stem (default bench/results/train_defaults_<kind>)")
    ap.add_argument("--config", action="append", type=json.loads, default=[],
                    help='run this configuration instead of the grid (JSON of train settings; repeat for several)')
    ap.add_argument("--part", default="0/1", help="k/n: run every n-th configuration from the k-th (n processes side by side)")
    ap.add_argument("--merge", type=Path, nargs="*", help="only merge these parts' json files into --out")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="OMP_NUM_THREADS for torch (default 1: on a busy machine more threads mostly wait)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)  # read when torch loads, below
    out = args.out or ROOT / "bench" / "results" / f"train_defaults_{args.kind}"
    command = "python bench/sweep_train_defaults.py " + " ".join(sys.argv[1:])
    if not args.merge and args.dataset is None:
        ap.error("--dataset is required (a built dataset version's folder)")
    if args.merge:
        commands = dict.fromkeys(json.loads(part.read_text())["command"] for part in args.merge)
        write_table(_merge(args.merge), args.kind, out, "`, `".join(commands))
        return
    k, n = (int(x) for x in args.part.split("/"))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for overrides in (args.config or _configs(args.kind, args.only))[k::n]:
            rows.append(run_one(args.kind, overrides, args.dataset, Path(work)))
            print(json.dumps(rows[-1]), flush=True)
            write_table(rows, args.kind, out, command)


if __name__ == "__main__":
    main()
