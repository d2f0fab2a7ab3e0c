"""The frozen base of a LoRA model in fp8: its linear layers run as fp8 GEMMs (``torch._scaled_mm``).

LoRA trains a few million parameters on top of billions that never change. On an H100 the fast
path spends ~77% of its GPU time in the base's bf16 GEMMs (bench/results/train_gpu.md), already at
~72% of the card's bf16 peak; fp8 tensor cores have twice that peak. This module swaps every
frozen ``nn.Linear`` (and the base layer inside each peft LoRA layer) for :class:`Fp8Linear`:

- the weight is quantized once to float8_e4m3fn with one scale per output row (forward), and once
  more transposed with one scale per input column (the input gradient of the backward pass); the
  bf16 weight is dropped, so the two fp8 copies take the memory the bf16 weight took;
- activations and output gradients are quantized on the fly, one scale per row (per token), so
  one outlier token does not flatten the others' resolution;
- the LoRA adapters, norms, embeddings and the LM head stay in bf16/fp32: only frozen matrix
  products change numerics, never the trained weights or the loss.

This is a different numeric recipe from bf16, like QLoRA's 4-bit base but at 8 bits with
per-channel scales: ``bench/bench_train_gpu.py`` reports its loss and LoRA-gradient agreement with
the bf16 model next to its speed, and ``bench/fp8_training_parity.py`` trains the same LoRA both
ways: on the random-init 7B one packed row's LoRA gradients differ in direction (cosine 0.54
against bf16), yet 100 training steps follow the same loss curve (largest gap 0.065, same held-out
loss to 4e-5). Through the training core on an H100 and an H200 (bench/check_train_fp8_gpu.py)
the adapter it trains scores as the bf16-trained one does on the bf16 base (accuracy 0.961 both;
0.953 with fast accumulation); the 7B step is 1.32-1.38x the bf16 fast path's (1.39-1.47x with
fast accumulation). Opt-in through ``train.fp8_base`` (and ``train.fp8_fast_accum``); the adapter
it trains loads on the bf16 base. On CUDA the activations are quantized by the Triton kernel of
``tasks/training/fastpath/fp8_kernels.py``.
``torch._scaled_mm`` runs on CUDA cards with fp8 tensor cores (compute capability 8.9+: L4, L40,
H100, H200) and, slowly, on CPU (tests).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448
_ALIGN = 16  # _scaled_mm wants every dimension a multiple of 16


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 values, fp32 dequantization scale of shape [rows, 1]) of a 2-D tensor, one scale per row."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of :func:`quantize_rows` for a stored fp8 weight: ``scale`` holds one value per row
    (as stored, shape [1, rows])."""
    return (q.float() * scale.reshape(-1, 1)).to(dtype)


# How activations are quantized on CUDA: "triton" (tasks/training/fastpath/fp8_kernels.py, one pass per row: the
# default), "compiled" (quantize_rows through torch.compile) or "eager" (six passes). The latter two
# are kept for bench/bench_fp8_layer.py, which times all three; CPU always runs quantize_rows.
QUANTIZER = "triton"
_compiled_quantize = None
_triton_quantize = None  # tasks.training.fastpath.fp8_kernels.quantize_rows_triton, imported on first use (CUDA only)


def _quantize(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rows, fused into one kernel on CUDA. Called from inside the custom operators below."""
    global _compiled_quantize, _triton_quantize, QUANTIZER
    if a.device.type != "cuda" or QUANTIZER == "eager":
        return quantize_rows(a)
    if QUANTIZER == "triton":
        if _triton_quantize is None:
            try:
                from tasks.training.fastpath.fp8_kernels import quantize_rows_triton as _triton_quantize
            except ImportError:  # a CUDA torch without Triton (inductor needs it too): eager, slower, same values
                warnings.warn("Triton is not importable: the fp8 base quantizes activations eagerly (slower)", stacklevel=2)
                QUANTIZER = "eager"
                return quantize_rows(a)
        return _triton_quantize(a)
    if _compiled_quantize is None:
        _compiled_quantize = torch.compile(quantize_rows, dynamic=True)
    return _compiled_quantize(a)


def _quantized_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] as rows, padded with zero rows to a multiple of 16 (_scaled_mm's alignment), quantized."""
    a = x.reshape(-1, x.shape[-1])
    pad = -a.shape[0] % _ALIGN
    if pad:
        a = torch.nn.functional.pad(a, (0, 0, 0, pad))
    return _quantize(a)


def _product(x: torch.Tensor, xq: torch.Tensor, xs: torch.Tensor, w: torch.Tensor, s: torch.Tensor,
             fast_accum: bool) -> torch.Tensor:
    """x @ w.T in fp8 from x's quantized rows (xq, xs = _quantized_rows(x)); w [N, K] fp8 with per-row
    scales s [1, N]. The result in x's dtype (an fp32 model on CPU gets fp32 back).
    ``fast_accum``: the tensor cores' fast accumulation (CUDA; faster, fewer accumulator bits)."""
    out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    y = torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=s, out_dtype=out_dtype,
                         use_fast_accum=fast_accum and x.device.type == "cuda")
    m = x.numel() // x.shape[-1]
    return y[:m].reshape(*x.shape[:-1], w.shape[0]).to(x.dtype)


# The products are custom operators (torch.library), opaque to torch.compile, with their autograd
# registered beside them. Measured on an H100 (torch 2.11): the same products inside a
# torch.autograd.Function, once compiled (inductor or aot_eager), returned an input gradient of
# exactly zero while eager was right, so every LoRA weight got no gradient and nothing trained.
# bench/check_train_fp8_gpu.py checks this through the training core on a GPU.
#
# The forward's activation quantization is an operator of its own: q, k and v (and gate and up)
# read the same normed hidden states, and a compiled decoder layer then quantizes them once, not
# three (two) times - the compiler merges identical pure calls on the same input (AOTAutograd's CSE).
@torch.library.custom_op("chainsignal::fp8_quantize_rows", mutates_args=())
def fp8_quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] as rows (padded with zero rows to a multiple of 16), quantized by :func:`_quantize`:
    (fp8 values [rows, K], fp32 scales [rows, 1])."""
    return _quantized_rows(x)


@fp8_quantize_rows.register_fake
def _(x):
    rows = (x.numel() // x.shape[-1] + _ALIGN - 1) // _ALIGN * _ALIGN
    return x.new_empty((rows, x.shape[-1]), dtype=E4M3), x.new_empty((rows, 1), dtype=torch.float32)


@torch.library.custom_op("chainsignal::fp8_linear", mutates_args=())
def fp8_linear(x: torch.Tensor, xq: torch.Tensor, xs: torch.Tensor, w_fwd: torch.Tensor, s_fwd: torch.Tensor,
               w_bwd: torch.Tensor, s_bwd: torch.Tensor, fast_accum: bool) -> torch.Tensor:
    """y = x @ W.T with W frozen and held twice in fp8: w_fwd [out, in] (per-row scales, forward)
    and w_bwd [in, out] (per-input-column scales, the input gradient). The product reads x's
    quantization (xq, xs = fp8_quantize_rows(x)); x itself is the autograd edge and gives the shape."""
    return _product(x, xq, xs, w_fwd, s_fwd, fast_accum)


@fp8_linear.register_fake
def _(x, xq, xs, w_fwd, s_fwd, w_bwd, s_bwd, fast_accum):
    return x.new_empty((*x.shape[:-1], w_fwd.shape[0]))


@torch.library.custom_op("chainsignal::fp8_linear_input_grad", mutates_args=())
def fp8_linear_input_grad(grad_out: torch.Tensor, w_bwd: torch.Tensor, s_bwd: torch.Tensor, fast_accum: bool) -> torch.Tensor:
    """dL/dx = grad_out @ W, from the transposed fp8 copy w_bwd [in, out]."""
    return _product(grad_out, *_quantized_rows(grad_out), w_bwd, s_bwd, fast_accum)


@fp8_linear_input_grad.register_fake
def _(grad_out, w_bwd, s_bwd, fast_accum):
    return grad_out.new_empty((*grad_out.shape[:-1], w_bwd.shape[0]))


INPUT_GRAD_IN_BF16 = False  # diagnostics (bench_train_gpu.py): the input gradient from the dequantized weight


def _setup_context(ctx, inputs, output) -> None:
    x, _, _, _, _, w_bwd, s_bwd, fast_accum = inputs
    ctx.save_for_backward(w_bwd, s_bwd)
    ctx.in_dtype, ctx.fast_accum = x.dtype, fast_accum


def _backward(ctx, grad_out):
    w_bwd, s_bwd = ctx.saved_tensors
    if INPUT_GRAD_IN_BF16:
        grad_in = grad_out @ dequantize_rows(w_bwd, s_bwd, grad_out.dtype).t()  # w_bwd: [in, out]
    else:
        grad_in = fp8_linear_input_grad(grad_out, w_bwd, s_bwd, ctx.fast_accum)
    return grad_in.to(ctx.in_dtype), None, None, None, None, None, None, None


fp8_linear.register_autograd(_backward, setup_context=_setup_context)


class Fp8Linear(nn.Module):
    """A frozen linear layer whose products run in fp8 (see the module docstring). No weight gradient.
    ``fast_accum`` turns on the tensor cores' fast accumulation in both products (``train.fp8_fast_accum``)."""

    def __init__(self, linear: nn.Linear, fast_accum: bool = False) -> None:
        super().__init__()
        w = linear.weight.detach()
        if w.shape[0] % _ALIGN or w.shape[1] % _ALIGN:
            raise ValueError(f"fp8 base needs layer sizes divisible by {_ALIGN}, got {tuple(w.shape)}")
        self.in_features, self.out_features, self.fast_accum = linear.in_features, linear.out_features, fast_accum
        w_fwd, s_fwd = quantize_rows(w)  # [out, in]: one scale per output row
        w_bwd, s_bwd = quantize_rows(w.t())  # [in, out]: one scale per input column
        self.register_buffer("w_fwd", w_fwd)
        self.register_buffer("s_fwd", s_fwd.reshape(1, -1))
        self.register_buffer("w_bwd", w_bwd.contiguous())
        self.register_buffer("s_bwd", s_bwd.reshape(1, -1))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (bf16), for code that inspects it; not used by forward."""
        return dequantize_rows(self.w_fwd, self.s_fwd, torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, xs = fp8_quantize_rows(x.detach())  # not differentiable: the gradient flows through x
        y = fp8_linear(x, xq, xs, self.w_fwd, self.s_fwd, self.w_bwd, self.s_bwd, self.fast_accum)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3 rowwise"
                + (", fast_accum" if self.fast_accum else ""))


def fp8_frozen_base(model: nn.Module, skip: tuple[str, ...] = ("lm_head",), fast_accum: bool = False) -> int:
    """Replace every frozen ``nn.Linear`` of ``model`` (peft LoRA layers' base layers included)
    with :class:`Fp8Linear`, in place; layers whose name contains one of ``skip``, and layers whose
    sizes are not multiples of 16 (fp8 GEMMs need them), stay. Returns how many layers were
    converted. Call after ``get_peft_model`` (LoRA weights stay trainable)."""
    targets = [(name, mod) for name, mod in model.named_modules()
               if type(mod) is nn.Linear and not mod.weight.requires_grad and not any(s in name for s in skip)
               and mod.in_features % _ALIGN == 0 and mod.out_features % _ALIGN == 0]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Fp8Linear(mod, fast_accum))
        mod.weight = None  # free the bf16 weight now, not when the loop ends
    return len(targets)


def fp8_supported(device: torch.device) -> bool:
    """Whether fp8 GEMMs run on ``device``: CPU (slowly) or a CUDA card of compute capability 8.9+."""
    if device.type == "cpu":
        return True
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)
