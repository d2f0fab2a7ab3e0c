"""GPU benchmark: LoRA fine-tuning throughput of the fast path vs the alpaca-lora-style reference.

Model: a 7B Llama-architecture model (Llama-2-7B shapes), random init on the GPU (nothing is
downloaded), bf16, LoRA r=8 on q_proj/v_proj. Data: random token ids with an alpaca-like length
distribution (64-512 tokens, loss on the response only). The same examples feed every variant.

  reference    eager attention, micro-batch 4 right-padded to the longest in the batch, model loss
  sdpa-packed  sdpa, examples packed into rows of --pack-tokens, document-masked (position_ids), use_cache=False
  flex-packed  the same with flex_attention
  flex-packed-compile   + torch.compile of each decoder layer (fixed row length: no recompiles)
  flex-packed-liger     + liger-kernel RMSNorm/SwiGLU/RoPE (only if liger_kernel imports)
  flex-packed-compile-8k  compile with 8192-token rows (more memory); any "-<N>k" suffix sets the row length
  flex-packed-compile-liger     compile + liger RMSNorm/SwiGLU (RoPE left to compile)
  flex-packed-compile-blockmask  the document BlockMask built by us and passed as attention_mask (no per-step host sync)
  flex-packed-compile-autotune  compile with mode="max-autotune-no-cudagraphs" (Triton GEMM templates tried)
  flex-packed-compile-blockmask-fp8  the frozen base's linear layers as fp8 GEMMs (tasks/training/fastpath/fp8.py: e4m3, rowwise
               scales; LoRA, norms, embeddings, LM head unchanged) - a different numeric recipe from bf16: the
               variant reports its loss and LoRA-gradient agreement with the bf16 model on the same packed row
  ...-fp8-fastaccum  the same with the fp8 GEMMs' fast accumulation (train.fp8_fast_accum: faster, fewer accumulator bits)
  ...-fp8mlp   fp8 for the MLPs' layers only (gate, up, down); the attention projections stay bf16
  ...-cudagraphs  compile with mode="reduce-overhead" (each decoder layer replayed as a CUDA graph)

Every variant runs its forward under torch.autocast(bf16), as the HF Trainer (alpaca-lora's
recipe) does: the LoRA weights stay fp32 (peft's default) and their matmuls run in bf16. A
"-fp32lora" suffix turns autocast off (LoRA matmuls and their inputs in fp32, measured slower).

--profile VARIANT[,VARIANT]: after timing, two more steps run under torch.profiler; the GPU time
by kernel family (GEMM, attention, fused Triton, other) and the busy share of the wall time go in
the variant's JSON, the top kernels in profile_<variant>.txt.

Measured: real (non-pad) tokens per second over the timed steps (forward, backward, AdamW step),
and peak allocated GPU memory. Packed variants fill their rows as the training core does with
``train.pack_tokens`` (best-fit decreasing, tasks/training/fastpath/packing.py; ~99% full); the packer's remainder
row is not timed. Before timing, each packed variant checks document masking on
this model: a packed row's logits vs each example alone (relative error must stay < 2e-2 in bf16),
and each compiled variant checks that its LoRA gradients on one batch are the eager model's.
Each variant runs in its own subprocess (a crashed kernel poisons the CUDA context).

Run (device machine):  python3 bench/bench_train_gpu.py --out $OUT
Needs torch, transformers, peft; imports nothing from chainsignal but tasks/training/fastpath/packing.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ["reference", "flex-packed-compile", "flex-packed-compile-blockmask", "flex-packed-compile-blockmask-6k",
            "flex-packed-compile-blockmask-autotune"]
IGNORE_INDEX = -100


def alpaca_lengths(rng) -> tuple[int, int]:
    """(total tokens, response tokens) of one alpaca-like example: log-normal around ~200, 64-512, response 20-60%."""
    length = int(min(512, max(64, rng.lognormvariate(5.3, 0.55))))
    return length, max(8, int(length * rng.uniform(0.2, 0.6)))


def make_examples(n: int, vocab: int, seed: int) -> list[dict]:
    """Alpaca-like: total length log-normal around ~200 tokens, clipped to 64-512; response 20-60%."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length, resp = alpaca_lengths(rng)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (length - resp) + ids[length - resp:]})
    return out


def build_model(attention: str, layers: int, hidden: int, device: str):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 43 // 16, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, use_cache=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, attn_implementation=attention, dtype=torch.bfloat16)
    model.config.use_cache = False
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                                            bias="none", task_type="CAUSAL_LM"))


def pack_rows(examples: list[dict], pack_tokens: int) -> list[list[dict]]:
    """The examples in rows of at most ``pack_tokens`` tokens, packed as the training core packs
    them with ``train.pack_tokens`` (tasks.training.fastpath.packing.pack_by_tokens: best-fit decreasing, fullest first)."""
    from tasks.training.fastpath.packing import pack_by_tokens

    return [[examples[i] for i in row] for row in pack_by_tokens([len(e["input_ids"]) for e in examples], pack_tokens)]


def lora_grad_vector(model, loss) -> torch.Tensor:  # noqa: F821 (torch loads lazily, in main)
    """Backpropagate ``loss`` and return every LoRA gradient as one fp32 vector; the gradients are
    cleared again, so consecutive calls compare like with like."""
    import torch

    loss.backward()
    g = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.requires_grad])
    model.zero_grad(set_to_none=True)
    return g


def cosine(a, b) -> float:
    import torch

    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def fp8_agreement(model, examples: list[dict], device: str, block_mask: bool, skip: tuple[str, ...] = ("lm_head",),
                  fast_accum: bool = False) -> dict:
    """Convert the frozen base to fp8 (tasks/training/fastpath/fp8.py) and report what that did to one packed row's
    loss and LoRA gradients (dropout off, under the bench's bf16 autocast), against the bf16 model.

    For scale, two more comparisons on the same model: bf16 against itself with the row's examples
    packed in reverse order (the same loss and gradients in exact arithmetic; only kernel shapes and
    summation order change), and fp8 in the forward pass only (input gradients from the dequantized
    weights in bf16), which tells the forward's share of the difference from the backward's."""
    import torch

    import tasks.training.fastpath.fp8 as fp8
    from tasks.training.fastpath.packing import collate_packed, packed_loss

    row = collate_packed(examples[:16], device, block_mask=block_mask)
    reversed_row = collate_packed(examples[:16][::-1], device, block_mask=block_mask)
    with torch.no_grad():  # B = 0 at init: give the adapters a value so that both A and B get gradients
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=1e-3)

    def loss_and_grads(b):
        model.eval()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss, _ = packed_loss(model, b)
        g = lora_grad_vector(model, loss)
        model.train()
        return float(loss), g

    loss_ref, g_ref = loss_and_grads(row)
    _, g_self = loss_and_grads(reversed_row)
    converted = fp8.fp8_frozen_base(model, skip=skip, fast_accum=fast_accum)
    torch.cuda.empty_cache() if device == "cuda" else None
    loss_fp8, g_fp8 = loss_and_grads(row)
    _, g_fp8_self = loss_and_grads(reversed_row)
    fp8.INPUT_GRAD_IN_BF16 = True  # the input gradient from the dequantized weight, in bf16
    try:
        _, g_fwd_only = loss_and_grads(row)
    finally:
        fp8.INPUT_GRAD_IN_BF16 = False
    return {"fp8_layers": converted, "fp8_loss_bf16": loss_ref, "fp8_loss_fp8": loss_fp8,
            "fp8_loss_rel_diff": abs(loss_fp8 - loss_ref) / abs(loss_ref),
            "fp8_lora_grad_cosine": cosine(g_ref, g_fp8), "fp8_lora_grad_rel_err": float((g_fp8 - g_ref).norm() / g_ref.norm()),
            "bf16_self_lora_grad_cosine": cosine(g_ref, g_self), "fp8_self_lora_grad_cosine": cosine(g_fp8, g_fp8_self),
            "fp8_forward_only_lora_grad_cosine": cosine(g_ref, g_fwd_only)}


def compiled_grad_check(model, step, batch, floor: float = 0.95) -> dict:
    """The compiled model's LoRA gradients against the same model run eagerly (torch.compiler's
    "force_eager" stance), on one batch, dropout off. A compiled variant is only timed honestly if
    it computes the same gradients: an fp8 base written as a torch.autograd.Function once compiled
    to an input gradient of zero (so no LoRA weight learned) while running faster. Pass: the norms
    agree within 10% and the cosine is >= ``floor`` (0.95; for an fp8 base, what merely packing
    the row in reverse order does to its eager gradients, less 0.1: on a deep random-init model
    fp8 rounding turns any change of summation order into a change of direction)."""
    import torch

    model.eval()
    try:
        compiled = lora_grad_vector(model, step(batch)[0])
        with torch.compiler.set_stance("force_eager"):
            eager = lora_grad_vector(model, step(batch)[0])
    finally:
        model.train()
    cos = cosine(compiled, eager)
    ratio = float(compiled.norm() / eager.norm())
    return {"compiled_grad_cosine": cos, "compiled_grad_norm_ratio": ratio,
            "compiled_grad_floor": floor, "compiled_grad_ok": cos >= floor and 0.9 < ratio < 1.1}


def masking_check(model, examples: list[dict], device: str, block_mask: bool = False) -> dict:
    """Document masking on this model, in bf16: a packed row's logits vs each example alone.

    bf16 logits of a deep random model differ between kernel shapes (reported: the first document
    of the row, which nothing precedes, gives that floor), so the check is relative: the same row
    WITHOUT masking (one running position_ids) shows what leaking looks like. Pass: the unmasked
    error is >= 10 x the worst masked document's error.
    """
    import torch

    from tasks.training.fastpath.packing import collate_packed

    model.eval()
    exs = examples[:4]
    b = collate_packed(exs, device, block_mask=block_mask)
    extra = {"attention_mask": b["block_mask"]} if block_mask else {}
    bounds = [0]
    for e in exs:
        bounds.append(bounds[-1] + len(e["input_ids"]))
    with torch.no_grad():
        masked = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False, **extra).logits[0].float()
        running = torch.arange(b["input_ids"].shape[1], device=device).unsqueeze(0)
        unmasked = model(input_ids=b["input_ids"], position_ids=running, use_cache=False).logits[0].float()
        alone = [model(input_ids=torch.tensor([e["input_ids"]], device=device), use_cache=False).logits[0].float() for e in exs]
    model.train()

    def rel(x, k):
        ref = alone[k]
        seg = x[bounds[k]:bounds[k + 1]]
        return float((seg - ref).norm() / ref.norm())

    floor = rel(masked, 0)
    worst = max(rel(masked, k) for k in range(1, len(exs)))
    leak = max(rel(unmasked, k) for k in range(1, len(exs)))
    ok = leak >= 10 * worst
    return {"mask_noise_floor_rel": floor, "mask_rel_err": worst, "unmasked_rel_err": leak, "mask_ok": ok,
            "mask_max_abs_diff": float(max((masked[bounds[k]:bounds[k + 1]] - alone[k]).abs().max() for k in range(len(exs))))}


def run_variant(name: str, args) -> dict:
    import torch

    from tasks.training.fastpath.packing import collate_packed, packed_loss

    attention = "eager" if name.startswith("reference") else ("sdpa" if name.startswith("sdpa") else "flex_attention")
    if "liger" in name:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        # with compile, RoPE stays with inductor (liger's RoPE under compile crashed in issue #7)
        apply_liger_kernel_to_llama(rope="compile" not in name or name.endswith("-rope"), rms_norm=True, swiglu=True,
                                    cross_entropy=False, fused_linear_cross_entropy=False)
    model = build_model(attention, args.layers, args.hidden, args.device)
    examples = make_examples(args.examples, 32000, seed=1)
    info: dict = {"variant": name, "attention": attention,
                  "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu (smoke test)",
                  "torch": torch.__version__}
    import peft
    import transformers

    info.update(transformers=transformers.__version__, peft=peft.__version__)
    if not name.startswith("reference"):
        # The mask is checked on the bf16 weights: an fp8 base changes the linear layers, not attention,
        # and its noise (amplified by 32 random layers) would swamp the check's relative rule.
        info.update(masking_check(model, examples, args.device, block_mask="blockmask" in name))
    if "fp8" in name:
        skip = ("lm_head", "self_attn") if "fp8mlp" in name else ("lm_head",)  # fp8mlp: the MLPs only
        info.update(fp8_agreement(model, examples, args.device, block_mask="blockmask" in name, skip=skip,
                                  fast_accum="fastaccum" in name))
        after = masking_check(model, examples, args.device, block_mask="blockmask" in name)
        info.update({f"fp8_{k}": v for k, v in after.items()})  # reported, not the gate
    if "compile" in name:
        mode = "max-autotune-no-cudagraphs" if "autotune" in name else ("reduce-overhead" if "cudagraphs" in name else None)
        for m in model.modules():
            if type(m).__name__.endswith("DecoderLayer"):
                m.compile(mode=mode)
    # fused=True on CUDA: one kernel for the LoRA weights' update, as the training core does there
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=args.device == "cuda")
    if name.startswith("reference"):
        batches = [examples[i:i + 4] for i in range(0, len(examples), 4)]

        def step(batch):
            width = max(len(e["input_ids"]) for e in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            lab = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            att = torch.zeros((len(batch), width), dtype=torch.long)
            for i, e in enumerate(batch):
                n = len(e["input_ids"])
                ids[i, :n], lab[i, :n], att[i, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
            loss = model(input_ids=ids.to(args.device), attention_mask=att.to(args.device), labels=lab.to(args.device),
                         use_cache=False).loss
            return loss, int(att.sum())
    else:
        sized = re.search(r"-(\d+)k(?:-|$)", name)
        pack = int(sized.group(1)) * 1024 if sized else args.pack_tokens
        batches = pack_rows(examples, pack)
        fixed = pack if "compile" in name else None

        def step(batch):
            b = collate_packed(batch, args.device, pad_to=fixed, block_mask="blockmask" in name)
            loss, _ = packed_loss(model, b)
            return loss, sum(len(e["input_ids"]) for e in batch)

    if args.device == "cuda" and "fp32lora" not in name:
        plain_step = step

        def step(batch):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return plain_step(batch)

    if "cudagraphs" in name:
        graphed_step = step

        def step(batch):
            torch.compiler.cudagraph_mark_step_begin()
            return graphed_step(batch)

    info["autocast"] = args.device == "cuda" and "fp32lora" not in name
    warm = args.warmup_compile if "compile" in name else args.warmup
    model.train()
    losses = []
    for batch in batches[:warm]:
        loss, _ = step(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if "compile" in name:
        floor = min(0.95, info["fp8_self_lora_grad_cosine"] - 0.1) if "fp8_self_lora_grad_cosine" in info else 0.95
        info.update(compiled_grad_check(model, step, batches[0], floor))
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    sync()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timed = batches[warm:]
    if not name.startswith("reference"):
        # The packer's remainder row (under half full: what is left once every full row is made)
        # is not timed; a training run packs each epoch's examples, so it is one row in many there.
        timed = [b for b in timed if sum(len(e["input_ids"]) for e in b) >= pack // 2]
        info["row_fill"] = sum(len(e["input_ids"]) for b in timed for e in b) / (pack * len(timed))
    tokens, t0 = 0, time.perf_counter()
    for batch in timed:
        loss, n = step(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += n
        losses.append(loss.detach())
        if time.perf_counter() - t0 > args.max_seconds:
            break
    sync()
    dt = time.perf_counter() - t0
    if name in args.profile.split(","):
        info["profile"] = profile_steps(step, opt, timed[len(losses):][:2] or timed[:2], sync,
                                        Path(args.out) / f"profile_{name}.txt")
    info.update(tokens=tokens, seconds=dt, tokens_per_s=tokens / dt,
                peak_gb=torch.cuda.max_memory_allocated() / 1e9 if args.device == "cuda" else float("nan"),
                steps=len(losses), loss_first=float(losses[0]), loss_last=float(losses[-1]),
                pack_tokens=None if name.startswith("reference") else pack)
    return info


def kernel_family(name: str) -> str:
    n = name.lower()
    if "quantize" in n:  # tasks/training/fastpath/fp8_kernels.py
        return "fp8-quantize"
    if any(k in n for k in ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "ampere_bf16", "triton_tem_fused_mm", "_mm_")):
        return "gemm"
    if "flex" in n or "attention" in n or "fmha" in n or "flash" in n:
        return "attention"
    if n.startswith("triton_") or "triton" in n:
        return "fused-triton"
    return "other"


def profile_steps(step, opt, batches, sync, path: Path) -> dict:
    """GPU time per kernel family over a few steps, and how busy the GPU was (kernel time / wall time)."""
    from torch.profiler import ProfilerActivity, profile

    sync()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for batch in batches:
            loss, _ = step(batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync()
    wall_us = (time.perf_counter() - t0) * 1e6
    fam: dict[str, float] = {}
    rows = []
    for e in prof.key_averages():
        if getattr(e, "device_type", None) is None or "CUDA" not in str(e.device_type):
            continue
        us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
        if not us:
            continue
        fam[kernel_family(e.key)] = fam.get(kernel_family(e.key), 0.0) + us
        rows.append((us, e.count, e.key))
    rows.sort(reverse=True)
    busy = sum(fam.values())
    lines = [f"wall {wall_us / 1e3:.1f} ms over {len(batches)} steps; GPU kernel time {busy / 1e3:.1f} ms ({busy / wall_us:.1%})"]
    lines += [f"{k:14s} {v / 1e3:9.1f} ms {v / busy:6.1%}" for k, v in sorted(fam.items(), key=lambda kv: -kv[1])]
    lines += ["", "top kernels (self GPU time ms, calls, name):"]
    lines += [f"{us / 1e3:9.2f} {n:6d}  {k[:150]}" for us, n, k in rows[:40]]
    path.write_text("\n".join(lines) + "\n")
    return {"wall_ms": wall_us / 1e3, "busy_share": busy / wall_us, **{f"{k}_share": v / busy for k, v in fam.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--layers", type=int, default=32)  # Llama-2-7B depth
    ap.add_argument("--hidden", type=int, default=4096)  # Llama-2-7B width (intermediate = 43/16 x = 11008)
    ap.add_argument("--device", default="cuda")  # cpu: smoke test of the script only, no figures
    ap.add_argument("--examples", type=int, default=1200)
    ap.add_argument("--pack-tokens", type=int, default=4096)  # tokens per packed row
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--warmup-compile", type=int, default=6)
    ap.add_argument("--max-seconds", type=float, default=25.0)  # timed window per variant
    ap.add_argument("--profile", default="")  # variants to profile after timing (comma-separated)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.variant:
        info = run_variant(args.variant, args)
        (out / f"train_gpu_{args.variant}.json").write_text(json.dumps(info, indent=2))
        print(json.dumps(info))
        return
    results = []
    for name in args.variants.split(","):
        passed = {k: v for k, v in vars(args).items() if k not in ("variant", "variants")}
        cmd = [sys.executable, __file__, "--variant", name] + [x for k, v in passed.items()
                                                              for x in (f"--{k.replace('_', '-')}", str(v))]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        path = out / f"train_gpu_{name}.json"
        if proc.returncode == 0 and path.is_file():
            results.append(json.loads(path.read_text()))
        else:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            results.append({"variant": name, "error": tail[0][:300]})
        print(f"{name}: {time.perf_counter() - t0:.0f}s wall, rc {proc.returncode}", flush=True)
    write_report(results, out)


def write_report(results: list[dict], out: Path) -> None:
    ref = next((r for r in results if r["variant"] == "reference" and "error" not in r), None)
    card = next((r["gpu"] for r in results if "gpu" in r), "unknown")
    lines = ["# LoRA training throughput, 7B Llama architecture (random init), bf16, LoRA r=8 q/v", "",
             f"Card: {card}; " + (f"torch {ref['torch']}, transformers {ref['transformers']}, peft {ref['peft']}" if ref else ""),
             "Command: `python3 bench/bench_train_gpu.py --out $OUT` (one subprocess per variant, same run, same GPU)", "",
             "| variant | real tok/s | x reference | peak GB | masking check (masked docs rel err; noise floor; unmasked) "
             "| compiled LoRA grads vs eager (cosine; norm ratio; pass floor) | steps timed | loss first -> last |",
             "| --- | ---: | ---: | ---: | --- | --- | ---: | --- |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} | | | | | | |")
            continue
        ratio = r["tokens_per_s"] / ref["tokens_per_s"] if ref else float("nan")
        mask = "n/a (padded)" if "mask_ok" not in r else (
            f"{'pass' if r['mask_ok'] else 'FAIL'} ({r['mask_rel_err']:.1e}; floor {r['mask_noise_floor_rel']:.1e}, "
            f"unmasked {r['unmasked_rel_err']:.1e})")
        grads = "n/a (eager)" if "compiled_grad_ok" not in r else (
            f"{'same' if r['compiled_grad_ok'] else 'DIFFERENT'} ({r['compiled_grad_cosine']:.4f}; {r['compiled_grad_norm_ratio']:.3f}; "
            f"floor {r.get('compiled_grad_floor', 0.95):.2f})")
        lines.append(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {ratio:.2f}x | {r['peak_gb']:.1f} | {mask} | {grads} | "
                     f"{r['steps']} | {r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
    for r in results:
        if "fp8_layers" in r:
            lines.append(f"\n{r['variant']}: {r['fp8_layers']} frozen linear layers as fp8 GEMMs. Same packed row, dropout off, "
                         f"against the bf16 model: loss {r['fp8_loss_bf16']:.4f} (bf16) vs {r['fp8_loss_fp8']:.4f} (fp8), "
                         f"rel. diff {r['fp8_loss_rel_diff']:.1e}; LoRA gradients cosine {r['fp8_lora_grad_cosine']:.4f}, "
                         f"rel. error {r['fp8_lora_grad_rel_err']:.1e}. For scale: bf16 against itself with the row packed in reverse "
                         f"order: cosine {r['bf16_self_lora_grad_cosine']:.4f}, "
                         f"fp8 against itself so: {r['fp8_self_lora_grad_cosine']:.4f}; fp8 in the forward only: "
                         f"cosine {r['fp8_forward_only_lora_grad_cosine']:.4f}. Masking check on the bf16 weights "
                         f"(the gate, in the table); after conversion: masked docs {r['fp8_mask_rel_err']:.1e}, "
                         f"floor {r['fp8_mask_noise_floor_rel']:.1e}, unmasked {r['fp8_unmasked_rel_err']:.1e}.")
        if "profile" in r:
            pr = r["profile"]
            shares = ", ".join(f"{k[:-6]} {v:.0%}" for k, v in sorted(pr.items(), key=lambda kv: -kv[1])
                               if k.endswith("_share") and k != "busy_share")
            lines.append(f"\nProfile of {r['variant']} (2 steps, torch.profiler): GPU busy {pr['busy_share']:.0%} of the wall time; "
                         f"GPU time by kernel family: {shares}.")
    text = "\n".join(lines) + "\n"
    (out / "train_gpu.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
