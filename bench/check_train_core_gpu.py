"""Tokens/s of train-lora's training core on a GPU: micro-batch rows against ``train.pack_tokens`` rows.

bench_train_gpu.py times the fast path with its own loop over 6,144-token rows. This script runs
the code the train-lora flow runs (``tasks.training.train.train_lora_adapter``: tokenizing, scheduler,
gradient clipping, accumulation, logging) on one model, in the same process and on the same GPU,
with flex attention, packing and regional torch.compile. Steady-state speed: the real tokens of the
steps after the first ``--warm-steps`` (which pay the compile) over the wall-clock time between the
core's reports of those steps (its ``log_metrics`` calls):

- ``rows of micro-batches``: ``train.packing`` alone, one packed row per micro-batch of examples
  (the rows' lengths vary from step to step);
- ``pack_tokens rows``: ``train.pack_tokens`` (best-fit rows of up to N tokens, padded to N under
  compile), bf16 base;
- the same with ``train.fp8_base`` and ``train.fp8_fast_accum``.

The model is the tiny Llama built on the fly (tasks.training.tinymodel) at the size given; the records are
SYNTHETIC instruction records whose inputs have an alpaca-like length distribution (64-512 tokens).
Needs pydantic, pydantic-settings, python-dotenv and polars next to torch/transformers/peft.

    python3 bench/check_train_core_gpu.py --out $OUT
    .venv/bin/python bench/check_train_core_gpu.py --device cpu --hidden 64 --layers 2 --heads 4 --examples 48 --out /tmp/x  # smoke
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("price", "volume", "gas", "fee", "whale", "transfer", "swap", "pool", "bid", "ask", "up", "down", "flat",
         "block", "miner", "token", "stake", "yield", "spread", "trend")


def alpaca_like_records(prompter, n: int, seed: int) -> list[dict]:
    """SYNTHETIC records: the input is a run of words whose count follows bench_train_gpu's alpaca-like
    length distribution (log-normal around ~200, 64-512), the output one of the labels."""
    from bench_train_gpu import alpaca_lengths  # bench/ is this script's directory

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length, _ = alpaca_lengths(rng)
        out.append({"instruction": prompter.instruction, "input": " ".join(rng.choice(WORDS) for _ in range(length - 40)),
                    "output": rng.choice(prompter.labels)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--examples", type=int, default=1200)
    ap.add_argument("--micro-batch", type=int, default=4)  # the alpaca-lora recipe's micro-batch
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pack-tokens", type=int, default=6144)
    ap.add_argument("--warm-steps", type=int, default=3)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])  # cpu: smoke test (sdpa, no compile, no fp8 run)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()

    import torch
    from check_train_launch_gpu import tiny_llama_for, write_outputs

    from tasks.core.settings import TrainSettings
    from tasks.dataset.prompter import Prompter
    from tasks.training.train import train_lora_adapter

    on_gpu = args.device == "cuda"
    if on_gpu and not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="train_core_"))
    prompter = Prompter.load()
    train, val = alpaca_like_records(prompter, args.examples, seed=1), alpaca_like_records(prompter, 16, seed=2)
    model_dir = tiny_llama_for(prompter, train, work, args)
    knobs = dict(device=args.device, attention="flex_attention" if on_gpu else "sdpa", packing=True, compile=on_gpu,
                 lora_dropout=0.05, epochs=1.0, batch_size=args.batch, micro_batch_size=args.micro_batch,
                 learning_rate=1e-4, cutoff_len=512, seed=7, warmup_steps=2)
    runs = [("rows of micro-batches", {}), ("pack_tokens rows", {"pack_tokens": args.pack_tokens})]
    if on_gpu:
        runs.append(("pack_tokens rows, fp8 base + fast accumulation",
                     {"pack_tokens": args.pack_tokens, "fp8_base": True, "fp8_fast_accum": True}))
    report = {"device": torch.cuda.get_device_name(0) if on_gpu else "cpu", "torch": torch.__version__,
              "args": vars(args) | {"out": str(args.out)}, "runs": {}}
    for name, extra in runs:
        seen: list[tuple[float, float]] = []  # (when the core reported the step, its real tokens)
        t0 = time.perf_counter()
        result = train_lora_adapter(TrainSettings(**knobs, **extra), str(model_dir), train, val, work / "adapter",
                                    log_metrics=lambda m, s: seen.append((time.perf_counter(), m["tokens_per_s"] * m["step_time_s"]))
                                    if "tokens_per_s" in m else None)
        w = min(args.warm_steps, len(seen) - 2)
        steady = sum(tok for _, tok in seen[w + 1:]) / (seen[-1][0] - seen[w][0])  # wall clock between reports
        report["runs"][name] = {**result.as_dict(), "wall_s": time.perf_counter() - t0,
                                "steady_tokens_per_s": steady, "steady_steps": len(seen) - w - 1}
        shutil.rmtree(work / "adapter", ignore_errors=True)
        torch._dynamo.reset()
        if on_gpu:
            torch.cuda.empty_cache()
    first = report["runs"]["rows of micro-batches"]
    base = first["steady_tokens_per_s"]
    report["mean_tokens_per_example"] = first["tokens_seen"] / max(1, first["steps"] * args.batch)
    lines = [f"# train-lora's training core: rows of micro-batches vs train.pack_tokens ({report['device']})", "",
             f"Command: `python3 bench/check_train_core_gpu.py {' '.join(sys.argv[1:])}`", "",
             f"Model: tiny Llama built on the fly, {args.layers} layers x {args.hidden} hidden ({args.heads} heads), random init; "
             f"LoRA r=8 q/v, dropout 0.05; {args.examples} SYNTHETIC records of alpaca-like lengths, one epoch, batch {args.batch}, "
             f"{knobs['attention']}, packing, compile={on_gpu}; {report['mean_tokens_per_example']:.0f} tokens an example on average. "
             "tok/s: real tokens of the steps after the first "
             f"{args.warm_steps} over the wall time between the core's reports of them.", "",
             "| run | steps | steady tok/s | x micro-batch rows | peak MB | wall s (incl. compile) | train loss (last) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in report["runs"].items():
        lines.append(f"| {name} | {r['steps']} | {r['steady_tokens_per_s']:,.0f} | {r['steady_tokens_per_s'] / base:.2f}x | "
                     f"{r['peak_memory_mb']:,.0f} | {r['wall_s']:.1f} | {r['train_loss_last']:.4f} |")
    if not on_gpu:
        lines += ["", "CPU smoke test of the script: not figures."]
    write_outputs(args.out, "train_core_gpu", lines, report)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
