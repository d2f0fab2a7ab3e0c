"""train.qlora on a GPU, through train-lora's training core: memory, speed, and the adapter's round trip.

Three runs of ``tasks.training.train.train_lora_adapter`` (the code the train-lora flow runs) on one model,
same records, same process, same GPU:

- ``bf16 base``: the LoRA default;
- ``4-bit base (QLoRA)``: ``train.qlora`` - the frozen base in NF4 with double quantization
  through bitsandbytes, bf16 compute, peft's ``prepare_model_for_kbit_training``;
- ``4-bit base + gradient checkpointing``: ``train.gradient_checkpointing`` on top.

Each runs in a process of its own and trains twice; the second run is measured (in one process,
the first run of the first variant ran at a quarter of its later speed: CUDA, cuBLAS and the
caching allocator warm up over more than a few steps).

Then the QLoRA adapter is reloaded the way a user reloads it (4-bit base from the same folder,
``PeftModel.from_pretrained``) and its validation loss is computed again: it must equal the loss
the training core reported at the end of training.

The model is the tiny Llama of tasks.training.tinymodel at the size given (random init; 8 layers x 4,096 is
a quarter of a 7B's decoder), the records SYNTHETIC with alpaca-like lengths. Attention sdpa,
packing on, no torch.compile (bitsandbytes' 4-bit layers are not compiled here), for all three.
Needs bitsandbytes, pydantic, pydantic-settings, python-dotenv and polars next to torch/transformers/peft.

    python3 bench/check_train_qlora_gpu.py --out $OUT
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


RUNS = [("bf16 base", {}), ("4-bit base (QLoRA)", {"qlora": True}),
        ("4-bit base + gradient checkpointing", {"qlora": True, "gradient_checkpointing": True})]


def knobs(args) -> dict:
    return dict(device="cuda", attention="sdpa", packing=True, compile=False, lora_dropout=0.05, epochs=1.0,
                batch_size=args.batch, micro_batch_size=args.micro_batch, learning_rate=1e-4, cutoff_len=512, seed=7,
                warmup_steps=2)


def records(args):
    from check_train_core_gpu import alpaca_like_records  # bench/ is this script's directory

    from tasks.dataset.prompter import Prompter

    prompter = Prompter.load()
    return prompter, alpaca_like_records(prompter, args.examples, seed=1), alpaca_like_records(prompter, 32, seed=2)


def run_variant(args) -> None:
    """One variant in this (child) process: trained twice, the second run measured (the first pays
    the process's CUDA, cuBLAS and allocator warm-up); its result as JSON in ``args.work``."""
    import json

    import torch

    from tasks.core.settings import TrainSettings
    from tasks.training.train import train_lora_adapter

    name, extra = RUNS[args.variant]
    _, train, val = records(args)
    speeds = []
    for _attempt in ("warm-up", "measured"):
        seen: list[tuple[float, float]] = []
        adapter = args.work / f"adapter-{args.variant}"
        shutil.rmtree(adapter, ignore_errors=True)
        torch.cuda.empty_cache()
        t0 = time.perf_counter()
        result = train_lora_adapter(TrainSettings(**knobs(args), **extra), str(args.work / "model"), train, val, adapter,
                                    log_metrics=lambda m, s: seen.append((time.perf_counter(), m["tokens_per_s"] * m["step_time_s"]))
                                    if "tokens_per_s" in m else None)
        w = min(args.warm_steps, len(seen) - 2)
        speeds.append(sum(tok for _, tok in seen[w + 1:]) / (seen[-1][0] - seen[w][0]))
    out = {**result.as_dict(), "wall_s": time.perf_counter() - t0, "steady_tokens_per_s": speeds[1],
           "warm_up_run_tokens_per_s": speeds[0]}
    (args.work / f"run-{args.variant}.json").write_text(json.dumps({"name": name, **out}, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--examples", type=int, default=640)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warm-steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--variant", type=int, help=argparse.SUPPRESS)  # internal: run one variant (child process)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant is not None:
        return run_variant(args)

    import json
    import subprocess

    import torch
    from check_train_launch_gpu import tiny_llama_for, write_outputs

    from tasks.training.data import evaluate_loss, tokenize_records
    from tasks.training.model import load_base_model

    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    import bitsandbytes

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="train_qlora_"))
    prompter, train, val = records(args)
    model_dir = tiny_llama_for(prompter, train, work, args)
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "bitsandbytes": bitsandbytes.__version__, "args": vars(args) | {"out": str(args.out), "work": None},
              "runs": {}}
    passthrough = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                   ("hidden", "layers", "heads", "examples", "micro_batch", "batch", "warm_steps")]
    for i, (name, _) in enumerate(RUNS):  # a process per variant: nothing carries over between them
        subprocess.run([sys.executable, __file__, *passthrough, "--variant", str(i), "--work", str(work)], check=True)
        report["runs"][name] = json.loads((work / f"run-{i}.json").read_text())

    # The round trip: the QLoRA adapter on a freshly loaded 4-bit base gives the loss training ended with.
    from peft import PeftModel, prepare_model_for_kbit_training

    qlora = report["runs"]["4-bit base (QLoRA)"]
    device = torch.device("cuda", 0)
    val_ex = None
    losses = {}
    for how in ("plain", "prepared"):
        tokenizer, base = load_base_model(str(model_dir), device, torch.bfloat16, attention="sdpa", qlora=True)
        base.config.use_cache = False
        weights_mb = base.get_memory_footprint() / 2**20
        if how == "prepared":  # as it trained: prepare_model_for_kbit_training keeps the norms in fp32
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        val_ex = val_ex or tokenize_records(tokenizer, prompter, val, knobs(args)["cutoff_len"], False)
        losses[how] = evaluate_loss(PeftModel.from_pretrained(base, str(work / "adapter-1")), val_ex,
                                    tokenizer.pad_token_id, args.micro_batch, device)
        del base
        torch.cuda.empty_cache()
    prepared, plain = losses["prepared"], losses["plain"]
    report["round_trip"] = {"val_loss_at_training_end": qlora["val_loss"], "val_loss_reloaded_prepared": prepared,
                            "val_loss_reloaded_plain": plain, "abs_diff_prepared": abs(prepared - qlora["val_loss"]),
                            "abs_diff_plain": abs(plain - qlora["val_loss"]), "base_4bit_footprint_mb": weights_mb}
    _, bf16 = load_base_model(str(model_dir), device, torch.bfloat16)
    report["base_bf16_footprint_mb"] = bf16.get_memory_footprint() / 2**20
    del bf16

    ref = report["runs"]["bf16 base"]

    lines = [f"# train.qlora through train-lora's training core ({report['device']}, bitsandbytes {report['bitsandbytes']})", "",
             f"Command: `python3 bench/check_train_qlora_gpu.py {' '.join(sys.argv[1:])}`", "",
             f"Model: tiny Llama built on the fly, {args.layers} layers x {args.hidden} hidden ({args.heads} heads), random init; "
             f"LoRA r=8 q/v, dropout 0.05; {args.examples} SYNTHETIC records of alpaca-like lengths, one epoch, batch {args.batch}, "
             f"micro-batch {args.micro_batch}, sdpa, packing, no compile. Base weights in memory: "
             f"{report['base_bf16_footprint_mb']:,.0f} MB in bf16, {weights_mb:,.0f} MB in 4-bit NF4. tok/s: real tokens of the "
             f"steps after the first {args.warm_steps} over the wall time between the core's reports of them.", "",
             "| run | steps | steady tok/s | x bf16 | peak MB | x bf16 | train loss (last) | val loss | warm-up run tok/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in report["runs"].items():
        lines.append(f"| {name} | {r['steps']} | {r['steady_tokens_per_s']:,.0f} | "
                     f"{r['steady_tokens_per_s'] / ref['steady_tokens_per_s']:.2f}x | {r['peak_memory_mb']:,.0f} | "
                     f"{r['peak_memory_mb'] / ref['peak_memory_mb']:.2f}x | {r['train_loss_last']:.4f} | {r['val_loss']:.4f} | "
                     f"{r['warm_up_run_tokens_per_s']:,.0f} |")
    rt = report["round_trip"]
    lines += ["", "Each variant ran in a process of its own, trained twice; the second run is the one measured.", "",
              f"Round trip: the QLoRA adapter reloaded on a fresh 4-bit base (`PeftModel.from_pretrained`) gives validation "
              f"loss {rt['val_loss_reloaded_prepared']:.6f} with the base prepared as in training "
              f"(`prepare_model_for_kbit_training`: norms in fp32) against {rt['val_loss_at_training_end']:.6f} at the end of "
              f"training (|diff| {rt['abs_diff_prepared']:.2e}); on the plain 4-bit base (norms in bf16) "
              f"{rt['val_loss_reloaded_plain']:.6f} (|diff| {rt['abs_diff_plain']:.2e})."]
    write_outputs(args.out, "train_qlora_gpu", lines, report)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
