"""The issue's single chronological split on the shared prices, run through the product's own commands:
train 2018-01-01 .. 2022-12-30, validation 2023, test 2024-01-01 .. 2024-06-29 (dataset.validation_start /
dataset.test_start), the direction task (next-day ETH move, 3 classes), prices only (the shared data hold no
chain and no posts for those years). Trains each model kind with its defaults and evaluates it against every
baseline; writes what the evaluate step concluded (verdict, per-model test macro-F1, MCC, predicted class
shares, collapsed baselines) to bench/results/shared_split.{md,json}. A single split is a demo: the figures
to quote are walk-forward's (bench/walk_forward_shared.py).

    .venv/bin/python bench/shared_split.py                      # ~25 min on 2 busy CPU cores (the encoder most of it)
    .venv/bin/python bench/shared_split.py --kinds causal       # the tiny causal model only: ~3 min
    .venv/bin/python bench/shared_split.py --kinds encoder --data-dir var/bench/ss_enc --reevaluate
                                            # the evaluate step again on the run the results file names (after a
                                            # change to the verdict or the metrics; no training)

Each run in the results keeps its own command, commit and time; a run of a kind not run now is kept from the file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin" / "chainsignal"


def env_for(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "OMP_NUM_THREADS": "1",
            "CHAINSIGNAL_STORAGE__DATA_DIR": str(data_dir), "CHAINSIGNAL_PRICES__FILE_DIR": str(ROOT / "data" / "sample" / "prices"),
            "CHAINSIGNAL_DATASET__START_DATE": "2018-01-01", "CHAINSIGNAL_DATASET__END_DATE": "2024-06-30",
            "CHAINSIGNAL_DATASET__VALIDATION_START": "2023-01-01", "CHAINSIGNAL_DATASET__TEST_START": "2024-01-01"}


def chainsignal(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([str(BIN), *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout[out.stdout.index("{"):])


def summarize(kind: str, trained: dict[str, Any]) -> dict[str, Any]:
    ev = trained["evaluation"]
    return {"kind": kind, "run_id": trained["run_id"], "steps": trained["steps"], "selected_step": trained.get("selected_step"),
            "selection_score": trained.get("selection_score"), "verdict": ev["verdict"],
            "test": {k: ev[k] for k in ev if k.startswith("test_") and isinstance(ev[k], (int, float))},
            "baselines": ev.get("baselines"), "seconds": trained["seconds"]}


def provenance() -> dict[str, str]:
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"command": "python bench/shared_split.py " + " ".join(sys.argv[1:]), "git": git,
            "finished_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{os.cpu_count()} CPU cores, torch on 1 thread"}


def markdown(result: dict[str, Any]) -> str:
    ds = result["dataset"]
    lines = ["# The shared prices on one chronological split (the issue's train to 2022, validation 2023, test 2024-01..06)", "",
             f"Dataset `{ds['fingerprint']}` (direction, ETH, prices only): rows {ds['rows']}, splits {ds['splits']}, "
             f"label counts {ds['label_counts']}.", ""]
    for run in result["runs"]:
        how = run["trained"]
        lines += [f"## {run['kind']} kind (defaults)", "",
                  f"Trained by `{how['command']}` (finished {how['finished_utc']}, git {how['git']}, "
                  f"{how['machine']}): steps {run['steps']}, weights kept from step {run['selected_step']} "
                  f"(validation macro-F1 {run['selection_score']}), {run['seconds']} s.", ""]
        if run.get("reevaluated"):
            r = run["reevaluated"]
            lines += [f"Evaluated again by `{r['command']}` (`chainsignal evaluate --run-id {run['run_id']}`, finished "
                      f"{r['finished_utc']}, git {r['git']}): the verdict and figures below are that evaluation's.", ""]
        lines += [f"**Verdict:** {run['verdict']}", "", "| figure | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(run["test"].items())]
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT / "var" / "bench" / "shared_split")
    ap.add_argument("--kinds", nargs="+", default=["causal", "encoder"], choices=["causal", "encoder"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shared_split")
    ap.add_argument("--reevaluate", action="store_true",
                    help="run only the evaluate step again on each kind's run named in --out's JSON (in --data-dir)")
    args = ap.parse_args()
    env = env_for(args.data_dir)
    old_path = args.out.with_suffix(".json")
    old = json.loads(old_path.read_text()) if old_path.exists() else {"runs": []}
    before = {r["kind"]: r for r in old["runs"]}  # each run keeps its own provenance
    if args.reevaluate:
        missing = [k for k in args.kinds if k not in before]
        if missing:
            raise SystemExit(f"--reevaluate: {old_path} has no {', '.join(missing)} run to evaluate again")
        dataset = old["dataset"]
    else:
        chainsignal(["ingest", "--start", "2018-01-01", "--end", "2024-06-30", "--only", "prices"], env)
        dataset = chainsignal(["build-dataset"], env)
    for kind in args.kinds:
        if args.reevaluate:
            prev = before[kind]
            ev = chainsignal(["evaluate", "--run-id", prev["run_id"]], env)
            run = {**summarize(kind, {**prev, "evaluation": ev}), "trained": prev["trained"], "reevaluated": provenance()}
        else:
            run = {**summarize(kind, chainsignal(["train", "--model-kind", kind], env)), "trained": provenance()}
        before[kind] = run
        print(json.dumps(run["verdict"]), flush=True)
    runs = [before[k] for k in ("causal", "encoder") if k in before]
    result = {"dataset": dataset, "runs": runs}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
