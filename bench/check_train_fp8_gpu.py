"""train.fp8_base through the real training core on a GPU: does the fp8-trained adapter serve on the bf16 base?

bench_train_gpu.py times the fp8 frozen base with its own loop, and fp8_training_parity.py follows its
loss curve; this script runs what the train-lora flow runs (``tasks.training.train.train_lora_adapter``, with
flex attention, packing and regional compile) three times on the same model and records: with the base
in bf16, with ``train.fp8_base``, and with ``train.fp8_fast_accum`` on top:

- the training core's own figures (steps, losses, tokens/s, peak memory);
- the adapter each run saved, loaded with peft on the plain bf16 base (what predict and the MLflow
  registry do), scored on held-out records: validation loss and label accuracy.

The data is SYNTHETIC and learnable: each record states a made-up daily move, and the label is its
sign (above +1% POSITIVE, below -1% NEGATIVE, otherwise NEUTRAL), so the adapter must read the
prompt. The model is the tiny Llama built on the fly (tasks.training.tinymodel) at the size given.
Needs pydantic, pydantic-settings, python-dotenv and polars next to torch/transformers/peft.

    python3 bench/check_train_fp8_gpu.py --out $OUT
    .venv/bin/python bench/check_train_fp8_gpu.py --device cpu --hidden 64 --layers 2 --heads 4 --examples 48 --out /tmp/x   # smoke
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


def learnable_records(prompter, n: int, seed: int) -> list[dict]:
    """SYNTHETIC records whose label is the sign of the stated move (a rule the adapter has to read)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        move = round(rng.uniform(-4.0, 4.0), 1)
        label = "POSITIVE" if move > 1.0 else "NEGATIVE" if move < -1.0 else "NEUTRAL"
        out.append({"instruction": prompter.instruction,
                    "input": f"ETH 1d {move:+.1f}%, txs {rng.randint(900, 1900)}, sentiment {rng.uniform(-1, 1):+.2f}",
                    "output": label})
    return out


def score_on_plain_base(model_dir: Path, adapter: Path, prompter, records: list[dict], cutoff_len: int, device) -> dict:
    """Load the saved adapter on the unquantized base (as predict does) and score the held-out records."""
    import torch
    from peft import PeftModel

    from tasks.evaluation.scoring import label_loglik, predict_labels
    from tasks.training.data import evaluate_loss, tokenize_records
    from tasks.training.model import load_base_model

    tok, base = load_base_model(str(model_dir), device)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        loss = evaluate_loss(model, tokenize_records(tok, prompter, records, cutoff_len, False), tok.pad_token_id, 16, device)
        preds, _ = predict_labels(label_loglik(model, tok, prompter, records, cutoff_len), prompter.labels)
    del model, base
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"val_loss_on_bf16_base": loss,
            "accuracy_on_bf16_base": sum(p == r["output"] for p, r in zip(preds, records, strict=True)) / len(records),
            "predictions": preds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--examples", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="regional torch.compile (default: on CUDA)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])  # cpu: smoke test (sdpa, no compile)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()

    import torch
    from check_train_launch_gpu import tiny_llama_for, write_outputs  # bench/ is this script's directory

    from tasks.core.settings import TrainSettings
    from tasks.dataset.prompter import Prompter
    from tasks.training.train import train_lora_adapter

    device = torch.device(args.device)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="train_fp8_"))
    prompter = Prompter.load()
    train, val = learnable_records(prompter, args.examples, seed=1), learnable_records(prompter, 128, seed=2)
    model_dir = tiny_llama_for(prompter, train, work, args)
    on_gpu = args.device == "cuda"
    knobs = dict(device=args.device, attention="flex_attention" if on_gpu else "sdpa", packing=True,
                 compile=on_gpu if args.compile is None else args.compile,
                 lora_dropout=0.05, epochs=args.epochs, micro_batch_size=args.micro_batch, batch_size=args.micro_batch,
                 learning_rate=args.lr, cutoff_len=256, seed=7)
    report = {"device": torch.cuda.get_device_name(0) if on_gpu else "cpu", "torch": torch.__version__,
              "args": vars(args) | {"out": str(args.out)}, "runs": {}}
    runs = (("bf16 base", False, False), ("fp8 base", True, False), ("fp8 base, fast accumulation", True, True))
    for name, fp8, fast in runs:
        adapter = work / name.replace(" ", "-").replace(",", "")
        t0 = time.perf_counter()
        cfg = TrainSettings(**knobs, fp8_base=fp8, fp8_fast_accum=fast)
        result = train_lora_adapter(cfg, str(model_dir), train, val, adapter)  # resets the peak itself
        wall = time.perf_counter() - t0
        served = score_on_plain_base(model_dir, adapter, prompter, val, 256, device)
        report["runs"][name] = {**result.as_dict(), "wall_s": wall, **served}
    preds = {name: r.pop("predictions") for name, r in report["runs"].items()}
    agree = {name: sum(a == b for a, b in zip(preds["bf16 base"], p, strict=True)) / len(val)
             for name, p in preds.items() if name != "bf16 base"}
    majority = max(sum(r["output"] == lab for r in val) for lab in prompter.labels) / len(val)
    report |= {"prediction_agreement": agree, "majority_accuracy": majority}

    lines = [f"# train.fp8_base through the training core ({report['device']})", "",
             f"Command: `python3 bench/check_train_fp8_gpu.py {' '.join(sys.argv[1:])}`", "",
             f"Model: tiny Llama built on the fly, {args.layers} layers x {args.hidden} hidden, random init; LoRA r=8 q/v, "
             f"dropout 0.05; {args.examples} SYNTHETIC records (label = sign of the stated move), {args.epochs:g} epochs, "
             f"micro-batch {args.micro_batch} packed, {knobs['attention']}, compile={knobs['compile']}. "
             "Every adapter is scored the same way: loaded with peft on the plain base (bf16 on CUDA, not fp8), 128 held-out records.", "",
             "| base while training | steps | train loss (last) | val loss (training core) | peak MB | wall s (incl. compile) "
             "| val loss, adapter on bf16 base | accuracy on bf16 base |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in report["runs"].items():
        lines.append(f"| {name} | {r['steps']} | {r['train_loss_last']:.4f} | {r['val_loss']:.4f} | "
                     f"{r['peak_memory_mb']:,.0f} | {r['wall_s']:.1f} | {r['val_loss_on_bf16_base']:.4f} | "
                     f"{r['accuracy_on_bf16_base']:.3f} |")
    lines += ["", f"Majority-class accuracy on the same records: {majority:.3f}. Same label as the bf16-trained adapter: "
              + "; ".join(f"{name} {a:.1%}" for name, a in agree.items()) + ".",
              "No throughput here: the first run also pays the kernels' warm-up; bench_train_gpu.py measures speed."]
    write_outputs(args.out, "train_fp8_gpu", lines, report)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
