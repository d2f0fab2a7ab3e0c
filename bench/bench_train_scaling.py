"""Multi-GPU scaling of LoRA training: real tokens/s on 1, 2, 4 (and 8) GPUs of one host, one run.

Model and data are bench_train_gpu.py's (imported, not copied): the 7B Llama-architecture model
(Llama-2-7B shapes, random init on the GPU, bf16, LoRA r=8 on q_proj/v_proj) and its alpaca-like
random-token examples, packed into document-masked rows of --pack-tokens. The step is that
bench's fast path, flex-packed-compile: flex_attention, packing, regional torch.compile of each
decoder layer, forward under bf16 autocast.

Weak scaling, as a data-parallel run is used: every GPU takes one packed row per step, so the
global batch grows with the GPU count; DDP all-reduces the LoRA gradients (the frozen 7B base is
never communicated). The 1-GPU baseline is the same script with one process and no DDP wrapper,
measured in the same invocation on the same machine.

    tokens/s(N)   real (non-pad) tokens of all GPUs / wall time of the timed steps (slowest rank)
    efficiency    tokens/s(N) / (N x tokens/s(1));  the goal of issue #10 is >= 85% at 4 GPUs

--parallelism fsdp shards the model with FSDP2 instead (meta-device init, each rank initialises
only its shard), for shapes that do not fit one GPU, e.g. a 70B Llama architecture:
    --parallelism fsdp --gpus 8 --layers 80 --hidden 8192 --heads 64 --kv-heads 8 --intermediate 28672 --grad-ckpt

Each GPU count runs as its own `torchrun --standalone --nproc_per_node N` child.

Run (multi-GPU machine):  python3 bench/bench_train_scaling.py --gpus 1,2,4,8 --out $OUT
CPU smoke test (2 gloo processes, no figures):
    python bench/bench_train_scaling.py --device cpu --layers 2 --hidden 256 --gpus 1,2 --out /tmp/x
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

GOAL_GPUS, GOAL_EFFICIENCY = 4, 0.85


# ----------------------------------------------------------------------------- one process (under torchrun)
def build_fsdp_model(args, device, world: int):
    """A Llama-architecture model with LoRA, sharded by FSDP2 before any weight exists: built on the
    meta device, ``fully_shard`` per decoder layer then root, and each rank fills only its own shard
    (random init, like bench_train_gpu's model: normal(0, 0.02), norms 1, LoRA B 0)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=args.hidden, intermediate_size=args.intermediate or args.hidden * 43 // 16,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads or args.heads, max_position_embeddings=max(4096, args.pack_tokens),
                      use_cache=False)
    with torch.device("meta"):
        model = LlamaForCausalLM._from_config(cfg, attn_implementation=args.attention, dtype=torch.bfloat16)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                                             bias="none", task_type="CAUSAL_LM"))
    if args.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mesh = init_device_mesh(device.type, (world,))
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    if args.compile:
        for layer in layers:
            layer.compile()
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device=device)
    torch.manual_seed(1234 + int(os.environ.get("RANK", "0")))  # shards differ; a random model either way
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if "norm" in name:
                local.fill_(1.0)
            elif "lora_B" in name:
                local.zero_()
            else:
                local.normal_(0.0, 0.02)
        for m in model.modules():  # rotary frequencies: buffers, emptied by to_empty; rebuilt from the config
            if hasattr(m, "inv_freq"):
                with torch.device(device):
                    fresh = type(m)(m.config)
                for name, buf in fresh.named_buffers(recurse=False):
                    setattr(m, name, buf)
    return model


def worker(args) -> None:
    import torch
    import torch.distributed as dist
    from bench_train_gpu import build_model, make_examples, pack_rows

    from tasks.training.fastpath.packing import collate_packed, packed_loss

    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = dist.get_node_local_rank(fallback_rank=rank)
    if cuda:
        torch.cuda.set_device(local)
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    fsdp = args.parallelism == "fsdp"
    if fsdp:
        model = build_fsdp_model(args, device, world)
        ddp = model
    else:
        model = build_model(args.attention, args.layers, args.hidden, str(device))
        if args.grad_ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if args.compile:
            for m in model.modules():
                if type(m).__name__.endswith("DecoderLayer"):
                    m.compile()
        ddp = model
        if world > 1:  # the 1-GPU baseline runs without the wrapper
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(model, device_ids=[local] if cuda else None, gradient_as_bucket_view=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rows = pack_rows(make_examples(args.examples, 32000, seed=1), args.pack_tokens)
    fixed = args.pack_tokens if args.compile else None

    def row(step: int) -> list[dict]:
        return rows[(step * world + rank) % len(rows)]  # every rank its own row; rows cycle when used up

    def train_step(step: int) -> tuple[torch.Tensor, int]:
        batch = collate_packed(row(step), device, pad_to=fixed)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss, _ = packed_loss(ddp, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach(), sum(len(e["input_ids"]) for e in row(step))

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    ddp.train()
    for s in range(args.warmup):
        train_step(s)
    sync()
    dist.barrier()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses, tokens = [], 0
    t0 = time.perf_counter()
    for s in range(args.warmup, args.warmup + args.steps):
        loss, n = train_step(s)
        losses.append(loss)
        tokens += n
    sync()
    dt = time.perf_counter() - t0
    dist.barrier()
    stats = torch.tensor([float(tokens), dt, torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0], dtype=torch.float64,
                         device=device)
    total = stats.clone()
    dist.all_reduce(total[0:1])  # tokens of every rank
    dist.all_reduce(total[1:3], op=dist.ReduceOp.MAX)  # the slowest rank's time, the largest peak
    if rank == 0:
        import peft
        import transformers

        info = {
            "gpus": world, "parallelism": args.parallelism if world > 1 or fsdp else "single",
            "device": torch.cuda.get_device_name(local) if cuda else "cpu (smoke test, no figures)",
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "attention": args.attention, "compile": args.compile, "grad_ckpt": args.grad_ckpt, "autocast_bf16": cuda,
            "layers": args.layers, "hidden": args.hidden, "pack_tokens": args.pack_tokens,
            "steps": args.steps, "warmup": args.warmup, "tokens": int(total[0]), "seconds": float(total[1]),
            "tokens_per_s": float(total[0] / total[1]), "tokens_per_s_per_gpu": float(total[0] / total[1]) / world,
            "step_s": float(total[1]) / args.steps, "peak_gb_max": float(total[2]) if cuda else None,
            "loss_first": float(losses[0]), "loss_last": float(losses[-1]),
        }
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"train_scaling_n{world}.json").write_text(json.dumps(info, indent=2))
        print(json.dumps(info), flush=True)
    dist.barrier()  # nobody tears the group down while rank 0 still writes (gloo aborts otherwise)
    dist.destroy_process_group()
    from tasks.training.launch import exit_now

    exit_now()  # rank 0 once aborted at exit after writing its result (see tasks.training.launch.exit_now)


# ----------------------------------------------------------------------------- orchestration
def gpu_counts(args) -> list[int]:
    wanted = sorted({int(x) for x in args.gpus.split(",") if x.strip()})
    if args.device != "cuda":
        return wanted
    import torch

    have = torch.cuda.device_count()
    dropped = [n for n in wanted if n > have]
    if dropped:
        print(f"only {have} GPUs visible: skipping {dropped}", flush=True)
    return [n for n in wanted if n <= have]


def child_args(args) -> list[str]:
    out = []
    for key, value in vars(args).items():
        if key in ("gpus", "worker") or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            out += [flag, str(value)]
    return out


def run_count(n: int, args) -> dict:
    out = Path(args.out) / f"train_scaling_n{n}.json"
    if out.exists():
        out.unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", __file__, "--worker",
           *child_args(args)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.device != "cuda":
        env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    print(f"{n} process(es): {time.perf_counter() - t0:.0f}s wall, rc {proc.returncode}", flush=True)
    (Path(args.out) / f"train_scaling_n{n}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode == 0 and out.is_file():
        return json.loads(out.read_text())
    log = (proc.stderr + proc.stdout).splitlines()
    print(f"--- {n} process(es) failed; the last lines of torchrun's output:", *log[-40:], sep="\n", file=sys.stderr, flush=True)
    lines = [ln for ln in log if "Error" in ln and "ChildFailedError" not in ln]
    tail = (lines or [ln for ln in log if ln.strip()] or ["no output"])[-1]
    return {"gpus": n, "error": tail.strip()[:300]}


def efficiencies(results: list[dict]) -> list[dict]:
    base = next((r for r in results if r.get("gpus") == 1 and "error" not in r), None)
    for r in results:
        if base and "error" not in r:
            r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["efficiency"] = r["speedup"] / r["gpus"]
    return results


def write_report(results: list[dict], args, out: Path) -> str:
    ok = [r for r in results if "error" not in r]
    first = ok[0] if ok else {}
    smoke = args.device != "cuda"
    model = ("7B Llama architecture (Llama-2-7B shapes)" if (args.layers, args.hidden) == (32, 4096)
             else f"Llama architecture, {args.layers} layers x {args.hidden} hidden")
    lines = [f"# LoRA training scaling over GPUs of one host: {model}, random init, bf16, LoRA r=8 q/v", ""]
    if smoke:
        lines += ["**CPU smoke test of the script (gloo, tiny shapes): the numbers below are not figures.**", ""]
    lines += [
        f"Device: {first.get('device', 'unknown')}; torch {first.get('torch', '?')}, transformers {first.get('transformers', '?')}, "
        f"peft {first.get('peft', '?')}",
        f"Step: {args.attention} attention, packed rows of {args.pack_tokens} tokens (one per GPU per step), "
        f"compile {args.compile}, bf16 autocast {not smoke}, {args.parallelism.upper()} for N > 1; "
        f"{args.warmup} warm-up + {args.steps} timed steps per GPU count.",
        f"Command: `python3 bench/bench_train_scaling.py {' '.join(sys.argv[1:])}`", "",
        "| GPUs | parallelism | real tok/s | tok/s per GPU | speedup | scaling efficiency | step s | peak GB (max GPU) "
        "| loss first -> last |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['gpus']} | failed: {r['error']} | | | | | | | |")
            continue
        eff = f"{r['efficiency']:.1%}" if "efficiency" in r else "n/a (no 1-GPU run)"
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else ""
        peak = f"{r['peak_gb_max']:.1f}" if r.get("peak_gb_max") is not None else "n/a"
        lines.append(f"| {r['gpus']} | {r['parallelism']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_gpu']:,.0f} | {speed} | "
                     f"{eff} | {r['step_s']:.3f} | {peak} | {r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
    goal = next((r for r in ok if r["gpus"] == GOAL_GPUS and "efficiency" in r), None)
    lines.append("")
    if smoke:
        lines.append("Goal (>= 85% scaling efficiency at 4 GPUs): not assessed on CPU.")
    elif goal:
        verdict = "met" if goal["efficiency"] >= GOAL_EFFICIENCY else "NOT met"
        lines.append(f"Goal (>= {GOAL_EFFICIENCY:.0%} scaling efficiency at {GOAL_GPUS} GPUs): **{verdict}** ({goal['efficiency']:.1%}).")
    else:
        lines.append(f"Goal (>= {GOAL_EFFICIENCY:.0%} at {GOAL_GPUS} GPUs): not measured in this run.")
    text = "\n".join(lines) + "\n"
    (out / "train_scaling.md").write_text(text)
    (out / "train_scaling.json").write_text(json.dumps(results, indent=2))
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one torchrun process
    ap.add_argument("--gpus", default="1,2,4,8", help="GPU counts (processes) to measure; 1 is the baseline")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])  # cpu: gloo smoke test, no figures
    ap.add_argument("--parallelism", default="ddp", choices=["ddp", "fsdp"])
    ap.add_argument("--layers", type=int, default=32)  # Llama-2-7B
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=32)  # fsdp builder only (ddp uses bench_train_gpu's 7B model)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--intermediate", type=int, default=None)
    ap.add_argument("--attention", default=None, help="default: flex_attention on cuda, sdpa on cpu")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on for cuda")
    ap.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--pack-tokens", type=int, default=4096)
    ap.add_argument("--examples", type=int, default=1200)
    ap.add_argument("--warmup", type=int, default=8)  # compile of the fixed row shape happens here
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=1800.0)  # seconds per GPU count
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    if args.attention is None:
        args.attention = "flex_attention" if args.device == "cuda" else "sdpa"
    if args.compile is None:
        args.compile = args.device == "cuda"
    if args.worker:
        worker(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = efficiencies([run_count(n, args) for n in gpu_counts(args)])
    print(write_report(results, args, out))
    if any("error" in r for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
