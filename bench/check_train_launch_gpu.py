"""The real train-lora worker on the GPUs of one host: tasks.training.launch under torchrun, NCCL.

bench_train_scaling.py measures the step on a 7B model with its own loop; this script runs the
code the train-lora flow runs (``launch_training`` -> torchrun -> ``tasks.training.launch.run_job`` ->
``tasks.training.train.train_lora_adapter``), on CUDA with NCCL, for DDP and FSDP2, and checks what the CPU
tests check with gloo:

- every process ends with the same LoRA weights (DDP: sha256 digests of all ranks agree);
- N processes of micro-batch m give the adapter that one process accumulating N micro-batches of
  m gives (same global batch, dropout off), within bf16 tolerance;
- the fast path is on: flex attention, packed document-masked rows, regional torch.compile.

The model is the tiny Llama built on the fly (tasks.training.tinymodel) at a size given on the command line;
the records are SYNTHETIC instruction records in the dataset's prompt format. No MLflow (the
device image has none; rank-0-only logging is tested on CPU). Needs pydantic, pydantic-settings,
python-dotenv and polars next to torch/transformers/peft (carry their wheels to the device).

    python3 bench/check_train_launch_gpu.py --nproc 2 --out $OUT
    .venv/bin/python bench/check_train_launch_gpu.py --device cpu --hidden 64 --layers 2 --heads 4 --out /tmp/x   # smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_records(prompter, n: int) -> list[dict]:
    labels = ("POSITIVE", "NEUTRAL", "NEGATIVE")
    return [{"instruction": prompter.instruction,
             "input": f"day {i}: ETH 1d {'+' if i % 2 else '-'}{i % 7}.{i % 10}%, txs {1000 + 37 * i}, "
                      f"sentiment {((i * 7) % 11 - 5) / 10:+.1f}",
             "output": labels[i % 3]} for i in range(n)]


def tiny_llama_for(prompter, records: list[dict], work: Path, args) -> Path:
    """The tiny Llama of tasks.training.tinymodel at the command line's size (--hidden, --layers, --heads),
    its tokenizer trained on ``records`` in the dataset's prompt format, saved under ``work``."""
    from tasks.training.tinymodel import build_tiny_llama

    corpus = [prompter.prompt(r["instruction"], r["input"]) + r["output"] for r in records] + list(prompter.labels)
    return build_tiny_llama(work / "model", corpus, vocab_size=2000, hidden_size=args.hidden, layers=args.layers,
                            heads=args.heads, seed=0, init_std=0.02)


def write_outputs(out: Path, stem: str, lines: list[str], report: dict) -> None:
    """Print the markdown report and write it, with the JSON beside it, as ``out/<stem>.md|.json``."""
    text = "\n".join(lines) + "\n"
    print(text)
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))


def max_rel_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys(), "adapters have different tensors"
    num = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    den = max(float(wa[k].float().abs().max()) for k in wa)
    return num / den if den else num


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--examples", type=int, default=96)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--parallelism", default="ddp,fsdp")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])  # cpu: gloo smoke test (sdpa, no compile)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()

    import torch

    from tasks.core.settings import TrainSettings
    from tasks.dataset.prompter import Prompter
    from tasks.training.launch import launch_training
    from tasks.training.train import train_lora_adapter

    if args.device == "cpu":
        args.compile = False
    elif not torch.cuda.is_available() or torch.cuda.device_count() < args.nproc:
        sys.exit(f"needs {args.nproc} CUDA devices, found {torch.cuda.device_count()}")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="train_launch_"))  # model, jobs, adapters: not results
    prompter = Prompter.load()
    train, val = synthetic_records(prompter, args.examples), synthetic_records(prompter, 16)
    model = tiny_llama_for(prompter, train, work, args)
    knobs = dict(device=args.device, attention="flex_attention" if args.device == "cuda" else "sdpa", packing=True,
                 compile=args.compile, lora_dropout=0.0, epochs=args.epochs, micro_batch_size=args.micro_batch,
                 batch_size=args.micro_batch * args.nproc,
                 learning_rate=1e-3, cutoff_len=256, seed=7)

    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    rows, report = [], {"device": device_name, "torch": torch.__version__, "args": vars(args) | {"out": str(args.out)}}
    t0 = time.perf_counter()
    single = train_lora_adapter(TrainSettings(**knobs), str(model), train, val, work / "single")
    rows.append(("1 process, accumulating", single, time.perf_counter() - t0, None))
    for par in args.parallelism.split(","):
        cfg = TrainSettings(**knobs, nproc=args.nproc, parallelism=par)
        t0 = time.perf_counter()
        result = launch_training(cfg, str(model), train, val, work / f"{par}-adapter", nproc=args.nproc,
                                 work_dir=work / f"{par}-job", timeout_s=900)
        wall = time.perf_counter() - t0
        rows.append((f"{args.nproc} processes, {par}", result, wall, max_rel_diff(work / "single", work / f"{par}-adapter")))

    lines = [f"# The real train-lora worker on {args.nproc} GPUs (torchrun, NCCL)", "",
             f"Device: {report['device']} x {args.nproc}; torch {torch.__version__}. "
             f"Tiny Llama built on the fly ({args.layers} layers x {args.hidden} hidden), {args.examples} SYNTHETIC records, "
             f"global batch {args.micro_batch * args.nproc}, micro-batch {args.micro_batch}, {args.epochs} epochs, "
             f"{knobs['attention']} attention + packing + compile={args.compile}, "
             f"{'bf16 autocast' if args.device == 'cuda' else 'fp32'}, dropout 0.", "",
             f"Command: `python3 bench/check_train_launch_gpu.py {' '.join(sys.argv[1:])}`", "",
             "| run | world | parallelism | steps | train loss (last) | val loss | tok/s | peak MB | wall s (incl. start + compile) "
             "| max rel. diff vs 1 process |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r, wall, diff in rows:
        lines.append(f"| {name} | {r.world_size} | {r.parallelism} | {r.steps} | {r.train_loss_last:.4f} | "
                     f"{r.val_loss:.4f} | {r.tokens_per_s:,.0f} | {r.peak_memory_mb:,.0f} | {wall:.1f} | "
                     f"{'' if diff is None else f'{diff:.2e}'} |")
        report[name] = {**r.as_dict(), "wall_s": wall, "max_rel_diff_vs_single": diff}
    lines += ["", "DDP replicas are checked by the launcher itself: it raises when the ranks' LoRA digests differ.",
              "tok/s and wall include process start and the first steps' compile on these few steps: not throughput "
              "figures (those are in train_scaling.md)."]
    write_outputs(args.out, "train_launch_gpu", lines, report)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
