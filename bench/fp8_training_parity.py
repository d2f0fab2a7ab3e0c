"""Does an fp8 frozen base (tasks/training/fastpath/fp8.py) train a LoRA as well as the bf16 base? Same run.

bench_train_gpu.py's `-fp8` variant is 1.25x faster than the bf16 fast path (run F; 1.32-1.37x since
the Triton quantizer), but one packed row's LoRA gradients point elsewhere (cosine 0.54 on the
random-init 7B). A gradient is one noisy sample;
what matters is whether training gets as far. This script trains the same LoRA on the same model
(bench_train_gpu's 7B Llama architecture, random init, seed 0), the same batches and seeds, once
with the bf16 base and once with the fp8 base (each in its own subprocess), and compares the loss
curves and the held-out loss.

Data: SYNTHETIC and learnable (random tokens cannot be learned): alpaca-like lengths; the prompt
starts with one of 16 key tokens, then random tokens; the response's first token is a fixed
function of the key (only reachable by attending back to the prompt's first token) and the rest are
drawn uniformly from 16 tokens. Best possible response loss: 0 on the first response token, ln 16
= 2.77 on the others.

    python3 bench/fp8_training_parity.py --out $OUT              # device machine (CUDA, fp8 tensor cores)
    .venv/bin/python bench/fp8_training_parity.py --device cpu --layers 2 --hidden 256 --steps 4 --out /tmp/x   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

KEYS, ANSWERS, FILLERS = range(100, 116), range(200, 216), range(300, 316)
IGNORE_INDEX = -100


def make_examples(n: int, seed: int) -> list[dict]:
    from bench_train_gpu import alpaca_lengths

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length, resp = alpaca_lengths(rng)
        k = rng.randrange(len(KEYS))
        prompt = [KEYS[k]] + [rng.randrange(1000, 32000) for _ in range(length - resp - 1)]
        answer = [ANSWERS[(5 * k + 3) % len(ANSWERS)]] + [rng.choice(FILLERS) for _ in range(resp - 1)]
        out.append({"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer})
    return out


def floor_loss(examples: list[dict]) -> float:
    """The best achievable mean response loss: 0 on each first answer token, ln 16 on the others."""
    labelled = sum(sum(1 for t in e["labels"] if t != IGNORE_INDEX) for e in examples)
    return (labelled - len(examples)) * math.log(len(FILLERS)) / labelled


def train_one(precision: str, args) -> dict:
    import torch
    from bench_train_gpu import build_model, pack_rows

    from tasks.training.fastpath.packing import collate_packed, packed_loss

    model = build_model(args.attention, args.layers, args.hidden, args.device)
    if precision == "fp8":
        from tasks.training.fastpath.fp8 import fp8_frozen_base

        converted = fp8_frozen_base(model)
    else:
        converted = 0
    rows = pack_rows(make_examples(args.examples, seed=1), args.pack_tokens)
    held_out = pack_rows(make_examples(64, seed=2), args.pack_tokens)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device == "cuda")

    def batch(row):
        return collate_packed(row, args.device, block_mask=args.attention == "flex_attention")

    def evaluate() -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), autocast:
            for row in held_out:
                loss, n = packed_loss(model, batch(row))
                total, count = total + float(loss) * n, count + n
        model.train()
        return total / count

    torch.manual_seed(7)  # LoRA dropout masks: the same sequence for both precisions
    curve, t0 = [], time.perf_counter()
    model.train()
    for step in range(args.steps):
        with autocast:
            loss, _ = packed_loss(model, batch(rows[step % len(rows)]))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        curve.append(float(loss))
    seconds = time.perf_counter() - t0
    return {"precision": precision, "fp8_layers": converted, "steps": args.steps, "train_loss": curve,
            "held_out_loss": evaluate(), "floor": floor_loss([e for r in held_out for e in r]), "seconds": seconds,
            "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu (smoke test)"}


def window_mean(xs: list[float], start: int, end: int) -> float:
    part = xs[start:end] or xs[-1:]
    return sum(part) / len(part)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision", help=argparse.SUPPRESS)  # one subprocess
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--attention", default=None, help="default: flex_attention on cuda, sdpa on cpu")
    ap.add_argument("--examples", type=int, default=1600)
    ap.add_argument("--pack-tokens", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--lr", type=float, default=3e-4)  # alpaca-lora's learning rate
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    args.attention = args.attention or ("flex_attention" if args.device == "cuda" else "sdpa")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.precision:
        (args.out / f"fp8_parity_{args.precision}.json").write_text(json.dumps(train_one(args.precision, args), indent=2))
        return

    results = {}
    for precision in ("bf16", "fp8"):
        cmd = [sys.executable, __file__, "--precision", precision] + [
            x for k, v in vars(args).items() if k != "precision" and v is not None for x in (f"--{k.replace('_', '-')}", str(v))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{precision} run failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        results[precision] = json.loads((args.out / f"fp8_parity_{precision}.json").read_text())
    bf16, fp8 = results["bf16"], results["fp8"]
    n = args.steps
    marks = sorted({0, n // 4, n // 2, 3 * n // 4, n - 1})
    lines = [f"# fp8 frozen base vs bf16: does the LoRA train as far? ({bf16['device']})", "",
             f"Command: `python3 bench/fp8_training_parity.py {' '.join(sys.argv[1:])}`", "",
             f"Model: Llama architecture, {args.layers} layers x {args.hidden} hidden, random init (seed 0), LoRA r=8 q/v, "
             f"AdamW lr {args.lr}, {args.attention}, packed rows of {args.pack_tokens} tokens, "
             f"{'bf16 autocast' if args.device == 'cuda' else 'bf16 weights'}; SYNTHETIC "
             f"learnable data (see the script). fp8: {fp8['fp8_layers']} frozen linear layers as fp8 GEMMs.", "",
             "| step | " + " | ".join(str(m + 1) for m in marks) + " | mean of the last 10 steps | held-out loss (floor "
             f"{bf16['floor']:.3f}) | seconds |",
             "| --- | " + " | ".join("---:" for _ in marks) + " | ---: | ---: | ---: |"]
    for r in (bf16, fp8):
        lines.append(f"| {r['precision']} train loss | " + " | ".join(f"{r['train_loss'][m]:.3f}" for m in marks)
                     + f" | {window_mean(r['train_loss'], n - 10, n):.3f} | {r['held_out_loss']:.3f} | {r['seconds']:.1f} |")
    gap = ((fp8["held_out_loss"] - bf16["held_out_loss"]) / (bf16["held_out_loss"] - bf16["floor"])
           if bf16["held_out_loss"] > bf16["floor"] else float("nan"))
    lines += ["", f"Held-out loss, fp8 - bf16: {fp8['held_out_loss'] - bf16['held_out_loss']:+.4f} "
              f"({gap:+.1%} of bf16's remaining distance to the floor). Seconds include no compile (eager), so they "
              "are not the throughput figures of train_gpu.md."]
    text = "\n".join(lines) + "\n"
    (args.out / "fp8_parity.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
