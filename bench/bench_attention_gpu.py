"""Attention of one packed row, forward + backward: flex_attention with our document BlockMask against
torch's variable-length FlashAttention (``torch.nn.attention.varlen.varlen_attn``), same run, same GPU.

The fast path's packed rows hold ~20-30 alpaca-like documents (64-512 tokens) in 6,144 tokens, each
document causal and alone. flex_attention skips the BlockMask's empty 128 x 128 blocks but computes
the partial ones whole: on these rows ~2.2x the document-causal work (counted below). The varlen
kernel walks each document's own causal triangle from cumulative sequence lengths. Both get the
same q, k, v and the same output gradient; the outputs and input gradients are compared.

    python3 bench/bench_attention_gpu.py --out $OUT
Needs torch (CUDA); imports tasks/training/fastpath/packing.py and the bench's length distribution only.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pack-tokens", type=int, default=6144)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()

    import torch
    from bench_train_gpu import alpaca_lengths
    from torch.nn.attention.flex_attention import flex_attention

    from tasks.training.fastpath.packing import document_block_mask, pack_by_tokens

    dev = "cuda"
    rng = random.Random(1)
    lengths = [alpaca_lengths(rng)[0] for _ in range(args.rows * args.pack_tokens // 200)]
    rows = [[lengths[i] for i in row] for row in pack_by_tokens(lengths, args.pack_tokens)][: args.rows]
    flex = torch.compile(flex_attention, dynamic=False)
    from torch.nn.attention import varlen as V

    sig = str(inspect.signature(V.varlen_attn))
    causal = {"is_causal": True} if "is_causal" in sig else {"window_size": (-1, 0)}

    def doc_rows(row):
        n = args.pack_tokens
        docs = row + ([n - sum(row)] if sum(row) < n else [])  # the pad filler is a document of its own
        pos = torch.cat([torch.arange(d) for d in docs]).unsqueeze(0).to(dev)
        cu = torch.tensor([0] + [sum(docs[:k + 1]) for k in range(len(docs))], dtype=torch.int32, device=dev)
        return pos, cu, max(docs)

    def run(kind, q, k, v, g, pos, cu, mx, mask):
        for t in (q, k, v):
            t.grad = None
        if kind == "flex":
            out = flex(q, k, v, block_mask=mask)  # [1, H, S, D]
        else:
            out = V.varlen_attn(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu, mx, mx,
                                **causal).transpose(0, 1).unsqueeze(0)
        out.backward(g)
        return out

    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "varlen_signature": sig,
              "rows": len(rows), "docs_per_row": sum(map(len, rows)) / len(rows)}
    times = {"flex": 0.0, "varlen": 0.0}
    worst = {"out": 0.0, "grad": 0.0}
    work = {"ideal": 0.0, "flex_blocks": 0.0}
    for row in rows:
        torch.manual_seed(0)
        shape = (1, args.heads, args.pack_tokens, args.head_dim)
        q, k, v = (torch.randn(shape, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        g = torch.randn(shape, device=dev, dtype=torch.bfloat16)
        pos, cu, mx = doc_rows(row)
        mask = document_block_mask(pos)
        work["ideal"] += sum(d * (d + 1) / 2 for d in row)
        work["flex_blocks"] += float(mask.to_dense().sum()) * 128 * 128  # blocks computed, full or partial
        outs = {}
        for kind in ("flex", "varlen"):
            o = run(kind, q, k, v, g, pos, cu, mx, mask)
            outs[kind] = (o.detach().float(), q.grad.float().clone())
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                run(kind, q, k, v, g, pos, cu, mx, mask)
            torch.cuda.synchronize()
            times[kind] += (time.perf_counter() - t0) / args.repeats
        real = sum(row)  # only the real documents are compared (the filler attends to itself either way)
        for key, idx in (("out", 0), ("grad", 1)):
            a, b = outs["flex"][idx][0, :, :real], outs["varlen"][idx][0, :, :real]
            worst[key] = max(worst[key], float((a - b).norm() / b.norm()))
    report |= {"flex_ms_per_row": 1e3 * times["flex"] / len(rows), "varlen_ms_per_row": 1e3 * times["varlen"] / len(rows),
               "varlen_speedup": times["flex"] / times["varlen"], "rel_diff_out": worst["out"], "rel_diff_q_grad": worst["grad"],
               "flex_work_over_ideal": work["flex_blocks"] / work["ideal"]}
    lines = [f"# Packed-row attention, forward + backward ({report['device']}, torch {report['torch']})", "",
             f"Command: `python3 bench/bench_attention_gpu.py {' '.join(sys.argv[1:])}`", "",
             f"{len(rows)} rows of {args.pack_tokens} tokens, {report['docs_per_row']:.1f} alpaca-like documents a row, "
             f"{args.heads} heads x {args.head_dim}, bf16. flex computes {report['flex_work_over_ideal']:.2f}x the "
             "documents' causal work (its BlockMask's blocks).", "",
             "| kernel | ms a row (fwd + bwd, one layer) | x flex |", "| --- | ---: | ---: |",
             f"| flex_attention + document BlockMask (compiled) | {report['flex_ms_per_row']:.3f} | 1.00x |",
             f"| varlen_attn (torch's FlashAttention, cu_seqlens) | {report['varlen_ms_per_row']:.3f} | {report['varlen_speedup']:.2f}x |",
             "", f"Same inputs: output rel. diff {worst['out']:.1e}, q gradient rel. diff {worst['grad']:.1e} (bf16)."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention_gpu.md").write_text(text)
    (args.out / "attention_gpu.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
