"""One walk-forward fold of the direction task at the real size: training seconds and label-likelihood
scoring seconds, the new ``label_loglik`` (each prompt run once) against the old way (prompt + label as one
padded sequence per label) in the same run, on the same machine.

Not a test. The fold comes through the product: ``tasks.evaluation.folds.walk_forward_folds`` over a built
direction dataset (by default the one ``bench/walk_forward_shared.py`` builds from the real 2018-2024 ETH/BTC
candles under var/bench/walk_forward_shared), the fold whose training days are nearest ``--train-days``,
relabelled by ``fold_frame`` and rendered by ``fold_records``; its records are written to ``--records`` once
and read from there afterwards (the GPU machine needs no dataset, only that file). Then, with the product's
default causal settings (tiny-llama built on the fold's training days, 3 epochs, a validation evaluation per
epoch keeping the best one) and nothing else changed but ``train.device``:

  1. build the tiny model (its BPE tokenizer trained on the fold's records), train once on 64 records untimed
     (first-call costs), then train the adapter
     (``train_lora_adapter``, as ``fold_lora`` does); with ``--train-old`` train again with the old scoring
     in the per-epoch selection, for the training-time share of the change;
  2. load the adapter as evaluation does (``load_scorer``) and score the fold's validation + test records
     ``--repeats`` times with each way, alternating, after one warm-up of each; the figures of the two ways
     are compared (max |difference|, same argmax).

Usage (here, on the shared CPU; the records file is built on the first run):
  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_fold_speed.py --device cpu --machine "..." --train-old
GPU machine (python3 there; the records file and the pydantic/polars wheels carried):
  python3 bench/bench_fold_speed.py --device cuda --machine "..." --train-old --json-out $OUT/fold_speed_gpu.json
Then merge that run in here:  .venv/bin/python bench/bench_fold_speed.py --merge <its json>
Results: <out>.json (one entry per machine label) and <out>.md, rewritten from every entry.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCORED = ("validation", "test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=ROOT / "var" / "bench" / "walk_forward_shared",
                   help="data dir holding the built direction dataset (only read when --records does not exist)")
    p.add_argument("--records", type=Path, default=ROOT / "var" / "bench" / "fold_speed" / "records.json")
    p.add_argument("--train-days", type=int, default=2000, help="the fold whose training days are nearest this")
    p.add_argument("--first-test-day", type=date.fromisoformat, default=date(2019, 1, 1))
    p.add_argument("--step-days", type=int, default=90)
    p.add_argument("--validation-days", type=int, default=90)
    p.add_argument("--device", default="cpu", help="train.device: cpu, cuda or auto")
    p.add_argument("--machine", default=None, help="the label of this run's entry (default: the device)")
    p.add_argument("--repeats", type=int, default=3, help="timed scorings of each way")
    p.add_argument("--train-old", action="store_true", help="train a second time with the old scoring in selection")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fold_speed")
    p.add_argument("--json-out", type=Path, default=None, help="also write this run alone here (the GPU side's $OUT)")
    p.add_argument("--merge", type=Path, default=None, help="add the runs of this JSON to <out> and rewrite it; no run")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- the fold
def build_fold_records(args: argparse.Namespace) -> dict[str, Any]:
    """The fold nearest --train-days of the built direction dataset, its records per split, via the product."""
    import polars as pl

    from tasks.core.settings import load_settings
    from tasks.core.storage import Workspace
    from tasks.dataset.prompter import Prompter
    from tasks.evaluation.folds import walk_forward_folds
    from tasks.evaluation.walkforward import fold_frame, fold_records

    version = Workspace(args.data_dir).dataset_version("direction")
    manifest = version.manifest
    features = pl.read_parquet(version.features_path)
    days = features.filter(pl.col("next_day_return").is_not_null())["date"].to_list()
    folds = walk_forward_folds(days, first_test_day=args.first_test_day, step_days=args.step_days,
                               validation_days=args.validation_days, embargo_days=manifest.embargo_days)
    n_train = [sum(f.train[0] <= d <= f.train[1] for d in days) for f in folds]
    k = min(range(len(folds)), key=lambda i: abs(n_train[i] - args.train_days))
    frame, thresholds = fold_frame(features, folds[k], load_settings().dataset)
    records = fold_records(frame, Prompter.load(), ["ETH", "BTC"], manifest.chain_label)
    return {"dataset": str(version.dir.relative_to(ROOT)) if version.dir.is_relative_to(ROOT) else str(version.dir),
            "fingerprint": manifest.fingerprint, "fold": folds[k].as_dict(), "thresholds": thresholds,
            "records": records}


def read_fold(args: argparse.Namespace) -> dict[str, Any]:
    if not args.records.is_file():
        fold = build_fold_records(args)
        args.records.parent.mkdir(parents=True, exist_ok=True)
        args.records.write_text(json.dumps(fold))
    return json.loads(args.records.read_text())


# ----------------------------------------------------------------------------- the old way, the peer
def reference_loglik(model, tokenizer, prompter, records, cutoff_len: int, batch_size: int = 8):
    """label_loglik as it was before #24's change: prompt + label as one right-padded sequence per label."""
    import numpy as np
    import torch

    from tasks.training.data import IGNORE_INDEX, collate, encode_pair

    with torch.no_grad():
        seqs = []
        for r in records:
            prompt = prompter.prompt(r["instruction"], r["input"])
            for lab in prompter.labels:
                p_ids, r_ids = encode_pair(tokenizer, prompt, prompter.response(lab), cutoff_len)
                seqs.append({"input_ids": p_ids + r_ids, "labels": [IGNORE_INDEX] * len(p_ids) + r_ids})
        out = np.zeros(len(seqs))
        device = next(model.parameters()).device
        model.eval()
        for i in range(0, len(seqs), batch_size):
            batch = collate(seqs[i:i + batch_size], tokenizer.pad_token_id, device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = batch["labels"][:, 1:]
            picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            out[i:i + len(picked)] = (picked * (target != IGNORE_INDEX)).sum(-1).cpu().numpy()
    return out.reshape(len(records), len(prompter.labels))


# ----------------------------------------------------------------------------- the measurements
def train_once(cfg, base: str, records: dict[str, list], out_dir: Path, old_selection: bool) -> dict[str, Any]:
    import tasks.training.train as train_module

    kept = train_module.label_loglik
    if old_selection:
        train_module.label_loglik = reference_loglik  # the per-epoch selection scores the old way
    try:
        t = time.perf_counter()
        result = train_module.train_lora_adapter(cfg, base, records["train"], records["validation"], out_dir)
        wall = time.perf_counter() - t
    finally:
        train_module.label_loglik = kept
    return {"wall_s": round(wall, 2), "train_seconds": round(result.seconds, 2), "steps": result.steps,
            "epochs": result.epochs, "examples": result.examples, "evaluations": result.evaluations,
            "selected_step": result.selected_step, "selection_score": result.selection_score,
            "tokens_per_s": round(result.tokens_per_s, 1), "device": result.device}


def time_scoring(scorer, records: list[dict], cutoff_len: int, repeats: int) -> dict[str, Any]:
    """Seconds of each way over ``records`` (median of ``repeats``, alternating), and how far their figures are apart."""
    import numpy as np
    import torch

    from tasks.training.data import label_loglik

    ways = {"new": label_loglik, "old": reference_loglik}
    figures = {name: fn(scorer.model, scorer.tokenizer, scorer.prompter, records[:16], cutoff_len)  # warm-up
               for name, fn in ways.items()}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            t = time.perf_counter()
            figures[name] = fn(scorer.model, scorer.tokenizer, scorer.prompter, records, cutoff_len)
            seconds[name].append(time.perf_counter() - t)  # figures come back as numpy: the device has finished
    med = {name: statistics.median(s) for name, s in seconds.items()}
    out = {"records": len(records), "new_s": round(med["new"], 4), "old_s": round(med["old"], 4),
            "speedup": round(med["old"] / med["new"], 2), "new_all_s": [round(x, 4) for x in seconds["new"]],
            "old_all_s": [round(x, 4) for x in seconds["old"]],
            "max_abs_diff": float(np.abs(figures["new"] - figures["old"]).max()),
            "same_argmax": float((figures["new"].argmax(1) == figures["old"].argmax(1)).mean())}
    dtype = next(scorer.model.parameters()).dtype
    if dtype != torch.float32:  # how far each way is from the same adapter in fp32: the size of the noise
        scorer.model.float()
        exact = reference_loglik(scorer.model, scorer.tokenizer, scorer.prompter, records, cutoff_len)
        out["dtype"] = str(dtype).removeprefix("torch.")
        out["vs_fp32"] = {name: {"max_abs_diff": float(np.abs(f - exact).max()),
                                 "same_argmax": float((f.argmax(1) == exact.argmax(1)).mean())} for name, f in figures.items()}
    return out


def command() -> str:
    exe = Path(sys.executable)
    exe_s = os.path.relpath(exe, ROOT) if exe.is_relative_to(ROOT) else exe.name
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    return threads + shlex.join([exe_s, *sys.argv])


def machine(device: str) -> dict[str, Any]:
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    out = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "load_1m_at_start": round(os.getloadavg()[0], 2), "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.core.settings import load_settings, with_overrides
    from tasks.dataset.prompter import Prompter
    from tasks.evaluation.scoring import load_scorer
    from tasks.training.tinymodel import resolve_base_model

    fold = read_fold(args)
    records = fold["records"]
    cfg = with_overrides(load_settings(), train={"device": args.device}).train
    prompter = Prompter.load()
    report: dict[str, Any] = {"command": command(), "machine": machine(args.device),
                              "when": datetime.now(UTC).isoformat(timespec="seconds"), "fold": fold["fold"],
                              "dataset": fold["fingerprint"], "rows": {k: len(v) for k, v in records.items()},
                              "settings": {k: getattr(cfg, k) for k in ("model_kind", "base_model", "epochs", "batch_size",
                                                                        "micro_batch_size", "learning_rate", "cutoff_len",
                                                                        "select_by", "class_balance", "device")}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = [prompter.prompt(r["instruction"], r["input"]) + r["output"] for r in records["train"]] + list(prompter.labels)
        t = time.perf_counter()
        base, _ = resolve_base_model(cfg, lambda name: work / "models" / name, corpus)
        report["model_build_s"] = round(time.perf_counter() - t, 2)
        warm = {"train": records["train"][:64], "validation": records["validation"][:16]}  # first-call costs, untimed
        train_once(cfg, base, warm, work / "warm-up", old_selection=False)
        report["train"] = train_once(cfg, base, records, work / "adapter", old_selection=False)
        if args.train_old:
            report["train_old_selection"] = train_once(cfg, base, records, work / "adapter-old", old_selection=True)
        scorer = load_scorer(work / "adapter", base, cfg.cutoff_len, model_type="causal", kind="class", device=args.device)
        tok = scorer.tokenizer
        report["label_tokens"] = {lab: len(tok(lab, add_special_tokens=False)["input_ids"]) for lab in prompter.labels}
        report["scoring"] = time_scoring(scorer, records["validation"] + records["test"], cfg.cutoff_len, args.repeats)
    return report


# ----------------------------------------------------------------------------- the results
NOTES = [
    "- The GPU runs start with the wheels the device image lacks (pydantic, pydantic-core, pydantic-settings, "
    "python-dotenv, polars, polars-runtime-32, annotated-types, typing-inspection, typing-extensions; cp312 "
    "manylinux, the versions of .venv) and the records file carried: `python3 -m pip install -q --no-index --no-deps "
    "--target /tmp/site var/wheels-fold-speed/*.whl && export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1`.",
    "- The tiny model (177k parameters) leaves the GPU waiting on the host: a step is a few kernel launches, so the "
    "same command on two H200 hosts differs about 2x; the ratios agree.",
    "- Training with the old scoring in its per-epoch selection is about as fast: three validation scorings of 90 "
    "records are a small share of 372 steps.",
    "- On the GPU the scorer runs in bfloat16. Its rounding flips labels whose likelihoods nearly tie, and the two ways "
    "round differently, so the selection's validation macro-F1 differs between them there (same weights, the last "
    "step kept); against the adapter in fp32 both ways are equally far off. On the CPU (fp32) they agree to ~1e-6.",
]


def _where(m: dict[str, Any]) -> str:
    host = (f"{m['gpu']} ({m['cores']} CPU cores)" if "gpu" in m else
            f"{m['cpu']}, {m['torch_threads']} torch thread(s) of {m['cores']} cores (load {m['load_1m_at_start']})")
    return f"{host}; Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}"


def _run_lines(label: str, r: dict[str, Any]) -> list[str]:
    tr, sc = r["train"], r["scoring"]
    lines = [f"### {label}", "", "| what | seconds | note |", "| --- | ---: | --- |",
             f"| tiny-llama built (BPE tokenizer on the fold's training records, random init) | {r['model_build_s']} | |",
             f"| training, new scoring in the per-epoch selection | {tr['wall_s']} | {tr['steps']} steps, {tr['epochs']:g} "
             f"epochs, {tr['evaluations']} validation evaluations, kept step {tr['selected_step']} "
             f"(val macro-F1 {tr['selection_score']:.3f}), {tr['tokens_per_s']:,.0f} tok/s |"]
    if "train_old_selection" in r:
        old = r["train_old_selection"]
        lines.append(f"| training, old scoring in the selection | {old['wall_s']} | **{old['wall_s'] / tr['wall_s']:.2f}x** "
                     f"the new; kept step {old['selected_step']} (val macro-F1 {old['selection_score']:.3f}) |")
    lines += [f"| scoring {sc['records']} validation + test records, new `label_loglik` | {sc['new_s']} | median of "
              f"{len(sc['new_all_s'])}: {sc['new_all_s']} |",
              f"| scoring them the old way (prompt + label per label) | {sc['old_s']} | {sc['old_all_s']} |",
              "", f"Scoring: new **{sc['speedup']}x** faster than the old way; figures apart by at most "
              f"{sc['max_abs_diff']:.2e} (same predicted label for {100 * sc['same_argmax']:.1f}% of records)"
              + _noise(sc) + f". Label tokens (EOS not counted): {r['label_tokens']}.", ""]
    return lines


def _noise(sc: dict[str, Any]) -> str:
    if "vs_fp32" not in sc:
        return ""
    v = sc["vs_fp32"]
    return (f"; the scorer runs in {sc['dtype']}, whose rounding is the noise: against the same adapter in fp32 (old "
            f"way) the new way is off by at most {v['new']['max_abs_diff']:.2e} ({100 * v['new']['same_argmax']:.1f}% same "
            f"label), the old way by {v['old']['max_abs_diff']:.2e} ({100 * v['old']['same_argmax']:.1f}%)")


def markdown(runs: dict[str, dict[str, Any]]) -> str:
    first = next(iter(runs.values()))
    rows, fold = first["rows"], first["fold"]
    lines = ["# One walk-forward fold of the direction task: training and scoring seconds", ""]
    for label, r in runs.items():
        lines += [f"- **{label}** ({r['when']}): `{r['command']}`", f"  on {_where(r['machine'])}"]
    lines += ["", "Produced by `bench/bench_fold_speed.py`; the peer is the old `label_loglik` (prompt + label as one "
              "right-padded sequence per label, kept in the script), timed in the same run on the same adapter.", "",
              f"Fold: dataset `{first['dataset']}` (real ETH/BTC daily candles, built by `bench/walk_forward_shared.py`), "
              f"train {fold['train_start']} .. {fold['train_end']} ({rows['train']} days), validation "
              f"{fold['validation_start']} .. {fold['validation_end']} ({rows['validation']}), test {fold['test_start']} .. "
              f"{fold['test_end']} ({rows['test']}). Settings: the product's defaults for the causal kind, only "
              f"`train.device` set: `{json.dumps({k: v for k, v in first['settings'].items() if k != 'device'})}`.", "",
              "Summary: " + "; ".join(f"{label}: training {r['train']['wall_s']} s, scoring {r['scoring']['speedup']}x "
                                      "the old way" for label, r in runs.items()) + ".", "", *NOTES, ""]
    for label, r in runs.items():
        lines += _run_lines(label, r)
    return "\n".join(lines)


def write_results(out: Path, new_runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    path = out.with_suffix(".json")
    runs = json.loads(path.read_text()) if path.is_file() else {}
    runs.update(new_runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(runs, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(runs))
    return runs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.merge:
        return write_results(args.out, json.loads(args.merge.read_text()))
    report = run(args)
    label = args.machine or args.device
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({label: report}, indent=2) + "\n")
    else:
        write_results(args.out, {label: report})
    sc = report["scoring"]
    print(f"{label}: train {report['train']['wall_s']} s; scoring {sc['records']} records new {sc['new_s']} s, "
          f"old {sc['old_s']} s: {sc['speedup']}x (max |diff| {sc['max_abs_diff']:.1e})"
          + (f"; training with the old selection scoring {report['train_old_selection']['wall_s']} s"
             if "train_old_selection" in report else ""))
    return report


if __name__ == "__main__":
    main()
