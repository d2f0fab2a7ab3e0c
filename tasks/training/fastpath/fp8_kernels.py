"""A Triton kernel for :func:`tasks.training.fastpath.fp8.quantize_rows` on CUDA: one program per row.

Imported only on CUDA (the CPU wheel of torch ships no Triton). Each program quantizes one row:
it reads the row once (rows up to 4,096 wide; wider ones twice, the second time mostly from L2),
takes its absolute maximum, scales, clamps and casts to float8_e4m3fn, and writes the fp8 row and
its fp32 scale. The arithmetic is the eager function's as torch runs it on CUDA: the scale is
``max(amax, 1e-12) * (1 / 448)`` (torch divides a tensor by a scalar through its reciprocal) and
the division by the scale rounds to nearest, so the result equals ``quantize_rows`` bit for bit
(checked by ``bench/bench_fp8_layer.py`` on a GPU: every value and scale, all three 7B shapes).

Why a kernel of our own: ``torch.compile(quantize_rows, dynamic=True)`` gave a looped reduction
that took 42 ms of a 7B step's ~220 ms of GPU time on an H100 (95 us a call over 445 calls;
``bench/results/train_gpu.md``), about three times what the bytes it moves cost, and every call
went through dynamo's guards on the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

E4M3_MAX = 448.0
# Launch shapes measured on an H200 (6,144 rows; bench/results/train_gpu.md): rows up to 4,096 wide
# in one pass (26 us for 4,096 columns); wider rows in two passes over 2,048-column chunks (11,008:
# 78 us, 135 us in one 16,384-lane pass) or 4,096-column chunks with 16 warps from 16,384 on (28,672: 167 us).
_ONE_PASS_MAX = 4096


def _launch_shape(cols: int) -> tuple[int, int]:
    """(columns read at once, warps) for rows ``cols`` wide."""
    if cols <= _ONE_PASS_MAX:
        block = triton.next_power_of_2(cols)
        return block, max(4, min(8, block // 512))
    return (2048, 8) if cols <= 16384 else (4096, 16)


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, s_ptr, n_cols, x_row_stride, q_row_stride,
                          FP8_MAX: tl.constexpr, BLOCK: tl.constexpr, ONE_PASS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_row_stride
    q_row = q_ptr + row * q_row_stride
    offs = tl.arange(0, BLOCK)
    if ONE_PASS:  # the whole row fits in registers: read it once
        mask = offs < n_cols
        x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12) * (1.0 / FP8_MAX)
        q = tl.clamp(tl.math.div_rn(x, scale), -FP8_MAX, FP8_MAX)
        tl.store(q_row + offs, q.to(tl.float8e4nv), mask=mask)
    else:  # wider rows: a pass for the maximum, then one to quantize (its reads mostly hit L2)
        amax = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            x = tl.load(x_row + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        scale = tl.maximum(tl.max(amax, axis=0), 1e-12) * (1.0 / FP8_MAX)
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            mask = cols < n_cols
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            q = tl.clamp(tl.math.div_rn(x, scale), -FP8_MAX, FP8_MAX)
            tl.store(q_row + cols, q.to(tl.float8e4nv), mask=mask)
    tl.store(s_ptr + row, scale)


def quantize_rows_triton(x: torch.Tensor, block: int | None = None, num_warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 rows, fp32 scales [rows, 1]) of a 2-D CUDA tensor; the same values as ``quantize_rows``.
    ``block`` (columns read at once) and ``num_warps`` override the launch shape (benchmarks)."""
    if x.dim() != 2:
        raise ValueError(f"quantize_rows_triton takes a 2-D tensor, got {x.dim()}-D")
    if x.stride(1) != 1:
        x = x.contiguous()
    rows, cols = x.shape
    q = torch.empty((rows, cols), device=x.device, dtype=torch.float8_e4m3fn)
    s = torch.empty((rows, 1), device=x.device, dtype=torch.float32)
    if rows:
        default_block, default_warps = _launch_shape(cols)
        block = block or default_block
        _quantize_rows_kernel[(rows,)](x, q, s, cols, x.stride(0), q.stride(0), FP8_MAX=E4M3_MAX, BLOCK=block,
                                       ONE_PASS=cols <= block, num_warps=num_warps or default_warps)
    return q, s
