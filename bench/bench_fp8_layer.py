"""One frozen linear layer, forward + input gradient: the fp8 layer (tasks/training/fastpath/fp8.py) against bf16, same run.

For each 7B layer shape (6,144 tokens; q/k/v/o 4,096 -> 4,096, gate/up 4,096 -> 11,008, down
11,008 -> 4,096) it times the compiled bf16 ``nn.Linear`` (the peer) and ``Fp8Linear`` eager,
compiled with ``aot_eager`` and with inductor, with each activation quantizer (the Triton kernel of
``tasks/training/fastpath/fp8_kernels.py``, ``quantize_rows`` compiled, eager) and with fast accumulation, and prints
for each the input gradient's relative error against bf16 (a compiled variant whose gradient norm is
0 is broken, not fast) and the speed ratio against the peer. On CUDA it first times the quantizers
alone and checks the Triton kernel's values against ``quantize_rows``.

    python3 bench/bench_fp8_layer.py            # CUDA (fp8 tensor cores: compute capability 8.9+)
    .venv/bin/python bench/bench_fp8_layer.py --device cpu   # smoke: one small shape
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tokens", type=int, default=6144)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    import torch

    import tasks.training.fastpath.fp8 as F

    dev = args.device
    shapes = [(4096, 4096), (4096, 11008), (11008, 4096)] if dev == "cuda" else [(256, 512)]
    m = args.tokens if dev == "cuda" else 256
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def rel(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    def timeit(fn):
        for _ in range(3):
            fn()
        sync()
        t = time.perf_counter()
        for _ in range(args.repeats):
            fn()
        sync()
        return (time.perf_counter() - t) / args.repeats * 1e3

    torch.manual_seed(0)
    print(f"device {torch.cuda.get_device_name(0) if dev == 'cuda' else 'cpu'}, torch {torch.__version__}, {m} tokens")
    for k, n in shapes:
        lin = torch.nn.Linear(k, n, bias=False, device=dev, dtype=torch.bfloat16).requires_grad_(False)
        torch.nn.init.normal_(lin.weight, std=0.02)
        x = torch.randn(1, m, k, device=dev, dtype=torch.bfloat16)
        g = torch.randn(1, m, n, device=dev, dtype=torch.bfloat16)

        def step(mod):
            xg = x.clone().requires_grad_(True)
            mod(xg).backward(g)
            return xg.grad

        ref = step(lin)
        peer_mod = torch.compile(lin)
        peer = timeit(lambda: step(peer_mod))
        print(f"{k} -> {n}: bf16 nn.Linear, compiled (the peer): {peer:.2f} ms")
        if dev == "cuda":  # the quantizer alone: Triton kernel against the compiled and eager quantize_rows
            from tasks.training.fastpath.fp8_kernels import quantize_rows_triton

            for rows_of, a in (("input", x[0]), ("output grad", g[0])):
                qe, se = F.quantize_rows(a)
                qt, st = quantize_rows_triton(a)
                same = float((qt.view(torch.uint8) == qe.view(torch.uint8)).float().mean())
                comp = torch.compile(F.quantize_rows, dynamic=True)
                times = {k: timeit(lambda f=f: f(a)) for k, f in
                         (("triton", quantize_rows_triton), ("compiled", comp), ("eager", F.quantize_rows))}
                torch._dynamo.reset()
                print(f"  quantize {rows_of} [{m}, {a.shape[1]}]: triton {times['triton'] * 1e3:.0f} us, compiled "
                      f"{times['compiled'] * 1e3:.0f} us, eager {times['eager'] * 1e3:.0f} us; triton == eager on "
                      f"{same:.4%} of values, scales max rel diff {float(((st - se).abs() / se).max()):.1e}")
        variants = (("eager", None, "triton", False), ("aot_eager", "aot_eager", "triton", False),
                    ("inductor", "inductor", "triton", False), ("inductor, compiled quantize", "inductor", "compiled", False),
                    ("inductor, eager quantize", "inductor", "eager", False), ("inductor, fast accum", "inductor", "triton", True))
        for name, backend, quantizer, fast in variants:
            torch._dynamo.reset()
            F.QUANTIZER, F._compiled_quantize = quantizer, None
            layer = F.Fp8Linear(lin, fast_accum=fast)
            mod = layer if backend is None else torch.compile(layer, backend=backend, fullgraph=True)
            grad = step(mod)
            ms = timeit(lambda: step(mod))
            print(f"  fp8 {name}: input-grad rel err {rel(grad, ref):.4f} (norm {float(grad.float().norm()):.3g} vs "
                  f"{float(ref.float().norm()):.3g}), {ms:.2f} ms = {peer / ms:.2f}x the peer")
        F.QUANTIZER, F._compiled_quantize = "triton", None
    if dev == "cuda":  # host time per call: with 16 tokens the kernels are short and the GPU waits on the host
        lin = torch.nn.Linear(4096, 4096, bias=False, device=dev, dtype=torch.bfloat16).requires_grad_(False)
        x = torch.randn(1, 16, 4096, device=dev, dtype=torch.bfloat16)
        g = torch.randn(1, 16, 4096, device=dev, dtype=torch.bfloat16)

        def small_step(mod):
            xg = x.clone().requires_grad_(True)
            mod(xg).backward(g)

        torch._dynamo.reset()
        peer_mod, fp8 = torch.compile(lin), F.Fp8Linear(lin)
        fp8_mod = torch.compile(fp8)
        print(f"host-bound call (16 tokens, forward + input gradient): bf16 compiled {timeit(lambda: small_step(peer_mod)) * 1e3:.0f} us, "
              f"fp8 eager {timeit(lambda: small_step(fp8)) * 1e3:.0f} us, fp8 compiled {timeit(lambda: small_step(fp8_mod)) * 1e3:.0f} us")

if __name__ == "__main__":
    main()
