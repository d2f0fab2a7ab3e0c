"""Encoder training step on CPU: LoRA on every layer in fp32 (the peer) against LoRA on the top N layers over cached
lower ones (``train.encoder_lora_layers``, tasks/training/encoder_cache.py FrozenPrefix) and against bfloat16 autocast
(``train.precision = "bf16"``).

Not a test. Real records: the direction task's day texts of a built dataset version (~122 MiniLM tokens each).
Per configuration it builds the product's model (``_peft_encoder``: LoRA on the layers ``lora_layers`` picks), caches
the lower layers' outputs for the texts it will step on (timed apart: paid once per text), then times optimizer
steps (forward, loss, backward, AdamW) at --batch-size and prints each one's seconds a step and its speed-up
against every layer in fp32 measured in the same run. Writes <out>.md and <out>.json.

    .venv/bin/python bench/bench_encoder_layers.py --dataset var/dir/datasets/direction/<fingerprint>
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(texts: list[str], n_top: int, batch: int, steps: int, precision: str) -> dict:
    import torch

    from tasks.core.settings import TrainSettings
    from tasks.training.encoder import _peft_encoder

    cfg = TrainSettings(model_kind="encoder", encoder_lora_layers=n_top, batch_size=batch, precision=precision)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    run = _peft_encoder(cfg, "class", cpu)  # the product's model, LoRA layers and prefix cache
    model, prefix = run.model, run.prefix
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    batches = [texts[i * batch:(i + 1) * batch] for i in range(steps + 1)]
    cache_s = 0.0
    if prefix is not None:
        t = time.perf_counter()
        prefix.add([x for b in batches for x in b])
        cache_s = (time.perf_counter() - t) / sum(len(b) for b in batches)
    y = torch.arange(batch) % 3
    model.train()

    def step(b: list[str]) -> None:  # the product's training step: _forward, the loss, AdamW
        logits, _ = run.forward(b)
        torch.nn.functional.cross_entropy(logits, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up
    t = time.perf_counter()
    for b in batches[1:]:
        step(b)
    layers = list(range(prefix.n_frozen, model.config.num_hidden_layers)) if prefix is not None else None
    return {"lora_layers": layers or "all", "encoder_lora_layers": n_top, "precision": precision,
            "step_s": (time.perf_counter() - t) / steps, "cache_s_per_text": cache_s,
            "cache_bytes_per_text": prefix.nbytes() / len(prefix.store) if prefix is not None else 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, required=True, help="a built direction dataset version's folder")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--top", type=int, nargs="+", default=[3, 2, 1], help="the N of train.encoder_lora_layers to time")
    ap.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                    help="train.precision values to time (each at every layer and each --top)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "encoder_layers_cpu")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    records = json.loads((args.dataset / "train.json").read_text())
    texts = [r["input"] for r in records[-(args.steps + 1) * args.batch_size:]]
    rows = [measure(texts, n, args.batch_size, args.steps, p) for p in dict.fromkeys(["fp32", *args.precision])
            for n in [0, *args.top]]
    peer = rows[0]["step_s"]  # every layer in fp32
    command = "python bench/bench_encoder_layers.py " + " ".join(sys.argv[1:])
    lines = ["# Encoder training step on CPU: LoRA on every layer against the top N over cached lower layers, "
             "in fp32 and in bfloat16 autocast", "",
             f"`{command}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} on {args.threads} thread(s), "
             f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d')}. all-MiniLM-L6-v2 (6 layers), batch "
             f"{args.batch_size}, {args.steps} timed steps after one warm-up, on the last day texts of dataset "
             f"`{args.dataset.name}` (direction task).", "",
             "| LoRA on | precision | s a step | speed-up vs every layer in fp32 | caching, ms a text (once) | cache, kB a text |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        what = "every layer" if r["encoder_lora_layers"] == 0 else f"top {r['encoder_lora_layers']} ({r['lora_layers']})"
        if r is rows[0]:
            what += " (the peer)"
        cache = (f"{r['cache_s_per_text'] * 1000:.1f} | {r['cache_bytes_per_text'] / 1000:.0f}" if r["encoder_lora_layers"]
                 else "- | -")
        lines.append(f"| {what} | {r['precision']} | {r['step_s']:.3f} | {peer / r['step_s']:.2f}x | {cache} |")
        print(f"{what} {r['precision']}: {r['step_s']:.3f} s a step, {peer / r['step_s']:.2f}x vs every layer in fp32", flush=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "threads": args.threads,
                                                         "batch_size": args.batch_size, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
