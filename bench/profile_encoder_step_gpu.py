"""Where an encoder training step's time goes on a GPU (MiniLM + LoRA, batch 8, the product's Runner).

Not a test, a probe. On the device a 1,983-day direction fold trains in ~56 s for 2,232 steps (~25 ms a step) with
every layer in fp32, and bf16 is slower, which says the step waits on the host, not on the GPU. This times, over the
real day texts of one prepared walk-forward fold (bench/walk_forward_encoder_gpu.py prepare), the phases of the
product's step with a synchronize after each: tokenizing, forward, loss + backward, gradient clipping, AdamW + the
schedule, the loss read back; then the same steps without the synchronizes (the real loop's pace); then a profiler
table of the top operators by host time.

    python bench/profile_encoder_step_gpu.py --fold var/gpu/wf/fold-19.json --base-model /tmp/m32 --out $OUT/profile.json
    .venv/bin/python bench/profile_encoder_step_gpu.py --render <that json> --md bench/results/encoder_step_gpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def render(data: dict, source: Path) -> str:
    """The probe's JSON as a results page: per configuration the step's pace, its phases and the GPU's share."""
    lines = ["# An encoder training step on the GPU: where the time goes", "",
             f"Command: `python bench/profile_encoder_step_gpu.py --fold {data['fold']} --base-model /tmp/m32 --steps "
             f"{data['steps']}` on the device ({data['device']}, torch {data['torch']}; one process, nothing else on the GPU), "
             f"rendered here from `{source.name}`. Batch 8 of the fold's real day texts, MiniLM + LoRA through the product's "
             "Runner.", "",
             "| precision | LoRA layers | step, unsynced (ms) | GPU kernels a step (ms) | GPU busy | kernels a step | "
             "tokenize | forward | backward | clip | AdamW | read loss |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        ph = r["phases_ms"]
        lines.append(f"| {r['precision']} | {r['encoder_lora_layers'] or 'all'} | {r['step_ms_unsynced']:.1f} | "
                     f"{r['gpu_kernel_ms_per_step']:.1f} | {r['gpu_kernel_ms_per_step'] / r['step_ms_unsynced']:.0%} | "
                     f"{r['kernels_per_step']:.0f} | " + " | ".join(f"{ph[k]:.1f}" for k in
                                                              ("tokenize", "forward", "backward", "clip", "optimizer", "item")) + " |")
    lines += ["", "The phases are timed with a synchronize after each (ms a step; the forward includes its own tokenizing); "
              "the unsynced step is the training loop's pace. GPU kernels: the profiler's device time over 20 steps.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--render", type=Path, default=None, help="write --md from this probe JSON instead of probing")
    ap.add_argument("--md", type=Path, default=ROOT / "bench" / "results" / "encoder_step_gpu.md")
    ap.add_argument("--fold", type=Path)
    ap.add_argument("--base-model", default=None)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--top", type=int, nargs="+", default=[0, 2], help="train.encoder_lora_layers values (0 = every layer)")
    ap.add_argument("--device", default="cuda", help="cuda (what it is for) or cpu (to try the script)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.render:
        args.md.write_text(render(json.loads(args.render.read_text()), args.render))
        return
    if args.fold is None:
        ap.error("--fold is required (a fold file of bench/walk_forward_encoder_gpu.py prepare)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from tasks.core.settings import TrainSettings
    from tasks.training.encoder import _peft_encoder
    from tasks.training.encoder_cache import encode

    texts = [r["input"] for r in json.loads(args.fold.read_text())["records"]["train"]]
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    results = []
    for precision in args.precision:
        for top in args.top:
            extra = {"base_model": args.base_model} if args.base_model else {}
            cfg = TrainSettings(model_kind="encoder", precision=precision, encoder_lora_layers=top, **extra)
            torch.manual_seed(0)
            run = _peft_encoder(cfg, "class", device)
            if run.prefix is not None:
                run.prefix.add(texts[: (args.steps + 1) * cfg.batch_size])
            model = run.model
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=cfg.learning_rate)
            y = (torch.arange(cfg.batch_size) % 3).to(device)
            batches = [texts[i * cfg.batch_size:(i + 1) * cfg.batch_size] for i in range(args.steps)]
            model.train()
            phases = dict.fromkeys(("tokenize", "forward", "backward", "clip", "optimizer", "item"), 0.0)

            def step(b: list[str], timed: bool) -> None:
                marks = [time.perf_counter()]

                def mark() -> None:
                    if timed:
                        sync()
                        marks.append(time.perf_counter())
                if run.prefix is None:  # tokenizing timed alone; the forward below tokenizes again, as the product's does
                    if timed:
                        encode(run.tokenizer, b, run.max_len, device)
                        mark()
                    else:
                        marks.append(marks[0])
                else:
                    marks.append(marks[0])
                logits, _ = run.forward(b)
                mark()
                torch.nn.functional.cross_entropy(logits.float(), y).backward()
                mark()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                mark()
                opt.step()
                opt.zero_grad(set_to_none=True)
                mark()
                _ = logits.detach().sum().item()
                mark()
                if timed:
                    for name, a, z in zip(phases, marks, marks[1:], strict=False):
                        phases[name] += z - a

            for b in batches[:10]:
                step(b, False)  # warm-up
            sync()
            for b in batches:
                step(b, True)
            sync()
            t = time.perf_counter()
            for b in batches:
                step(b, False)
            sync()
            free_ms = (time.perf_counter() - t) / len(batches) * 1e3
            with torch.profiler.profile(activities=activities) as prof:
                for b in batches[:20]:
                    step(b, False)
                sync()
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
            kernels = sum(e.count for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA) / 20
            gpu_ms = sum(e.self_device_time_total for e in prof.key_averages()) / 20 / 1e3
            row = {"precision": precision, "encoder_lora_layers": top, "batch_size": cfg.batch_size,
                   "step_ms_unsynced": round(free_ms, 2),
                   "phases_ms": {k: round(v / len(batches) * 1e3, 2) for k, v in phases.items()},
                   "gpu_kernel_ms_per_step": round(gpu_ms, 2), "kernels_per_step": round(kernels, 1)}
            results.append(row)
            print(json.dumps(row), flush=True)
            print(table, flush=True)
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                                        "fold": str(args.fold), "steps": args.steps, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
