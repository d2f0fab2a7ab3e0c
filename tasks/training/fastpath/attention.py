"""Which fused attention kernels torch's ``scaled_dot_product_attention`` may pick.

On an H100, torch 2.11 tries cuDNN's fused attention first. cuDNN builds an execution plan for
every new shape it sees, and training or scoring on varied-length rows meets a new shape at almost
every step. Measured through train-lora's training core on one H100 (8 x 4,096 Llama, sdpa, packed
rows of 4 alpaca-like examples, 20 steps; ``bench/check_train_qlora_gpu.py``): the first run of a
process 6,229 tok/s, the same run again in that process (every shape seen) 24,608; with cuDNN's
kernel left out, 24,856 the first time and 24,946 the second. So the work that meets new shapes
runs with flash, memory-efficient and math kernels only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def sdpa_without_cudnn(fn: F) -> F:
    """Run ``fn`` with cuDNN's fused attention left out of sdpa's choices (torch imported on call)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
