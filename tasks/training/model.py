"""The model a LoRA run trains: where it runs (device, dtype), the base model loaded from a path or hub id
(whole, 4-bit for QLoRA, or rank 0 only for FSDP), and the steps that make it trainable: gradient
checkpointing, the LoRA wrap, an fp8 frozen base, regional compile.

Like tasks/training/train.py this module imports neither prefect nor mlflow.
"""

from __future__ import annotations

import importlib
import resource
import threading
from typing import Any

import torch

from tasks.core.logs import get_logger, quiet_peft_wrap
from tasks.core.settings import TrainSettings

# transformers 5 resolves its names lazily on first use, and that is not thread-safe: two walk-forward folds starting
# together in threads failed with "cannot import name 'get_linear_schedule_with_warmup' from 'transformers'". These are
# the names the training and scoring code imports inside its functions; import_hf_names() resolves them once per process,
# under a lock, before threads use them (tests/training/test_hf_imports.py checks the list against the code).
HF_NAMES: dict[str, tuple[str, ...]] = {
    "transformers": ("AutoConfig", "AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoTokenizer",
                     "BitsAndBytesConfig", "LlamaConfig", "LlamaForCausalLM", "PreTrainedTokenizerFast",
                     "get_linear_schedule_with_warmup"),
    "transformers.modeling_outputs": ("CausalLMOutputWithPast",),
    "peft": ("LoraConfig", "PeftModel", "TaskType", "get_peft_model", "prepare_model_for_kbit_training"),
}
_HF_LOCK = threading.Lock()
_hf_resolved = False


def import_hf_names() -> None:
    """Resolve every name of :data:`HF_NAMES` once in this process (threads that start training together call it
    first; later calls return at once)."""
    global _hf_resolved
    with _HF_LOCK:
        if _hf_resolved:
            return
        for module, names in HF_NAMES.items():
            loaded = importlib.import_module(module)
            for name in names:
                getattr(loaded, name)
        _hf_resolved = True


# ----------------------------------------------------------------------------- where it runs
def pick_device(setting: str = "auto") -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def pick_train_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``train.precision``: auto = bf16 where the device supports it, else fp32."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("train.precision is 'bf16' but this GPU does not support bfloat16; use 'auto' or 'fp32'")
        return torch.bfloat16
    return pick_dtype(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of the run so far: allocated GPU memory on CUDA, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- loading
def load_base_model(name_or_path: str, device: torch.device, dtype: torch.dtype | None = None, *,
                    attention: str | None = None, qlora: bool = False):
    """Tokenizer and causal LM from a local path or a hub id (cached copy when HF_HUB_OFFLINE=1).

    ``attention`` picks the attention implementation (eager, sdpa, flex_attention); ``qlora``
    loads the frozen base in 4-bit NF4 through bitsandbytes (CUDA only).
    """
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(name_or_path)
    dtype = dtype or pick_dtype(device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attention:
        kwargs["attn_implementation"] = attention
    if qlora:
        kwargs["quantization_config"] = qlora_config(device, dtype)
        kwargs["device_map"] = {"": device.index or 0}
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    if not qlora:
        model.to(device)
    return tokenizer, model


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:  # Llama tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def qlora_config(device: torch.device, compute_dtype: torch.dtype):
    """4-bit NF4 quantization of the frozen base (QLoRA); one-line errors when it cannot run here."""
    if device.type != "cuda":
        raise ValueError("train.qlora needs a CUDA device (bitsandbytes 4-bit); set train.qlora=false on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ValueError("train.qlora needs the bitsandbytes package: pip install bitsandbytes") from exc
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def load_base_model_for_fsdp(name_or_path: str, rank: int, dtype: torch.dtype, *, attention: str | None = None):
    """Tokenizer and causal LM for FSDP: rank 0 reads the weights into CPU memory, every other rank
    builds the same architecture on the meta device (no memory). :func:`tasks.training.distributed.shard_fsdp`
    then gives each rank its shard of rank 0's weights, so no GPU ever holds the whole model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = load_tokenizer(name_or_path)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attention:
        kwargs["attn_implementation"] = attention
    if rank == 0:
        return tokenizer, AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    config = AutoConfig.from_pretrained(name_or_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    return tokenizer, model


# ----------------------------------------------------------------------------- making it trainable
def prepare_for_training(model, cfg: TrainSettings):
    """QLoRA's preparation of a 4-bit base, or gradient checkpointing alone; no KV cache either way."""
    if cfg.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns there
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # training: a KV cache would also switch packed document masking off
    return model


def wrap_lora(model, cfg: TrainSettings):
    """The peft model: LoRA adapters on ``cfg.target_modules``, everything else frozen."""
    from peft import LoraConfig, get_peft_model

    with quiet_peft_wrap():
        return get_peft_model(model, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM",
        ))


def use_fp8_base(model, cfg: TrainSettings, device: torch.device) -> None:
    """``train.fp8_base``: the frozen base's linear layers become fp8 GEMMs (one process, fp8 tensor cores)."""
    from tasks.training.fastpath.fp8 import fp8_frozen_base, fp8_supported

    if cfg.distributed:
        raise ValueError("train.fp8_base runs in one process for now; set train.nproc=1")
    if not fp8_supported(device):
        raise ValueError(f"train.fp8_base needs fp8 tensor cores (CUDA compute capability 8.9+, e.g. L4, H100); "
                         f"{device} has none: set train.fp8_base=false")
    fast_accum = cfg.fp8_fast_accum
    get_logger().info("fp8 base: %d frozen linear layers now run as fp8 GEMMs%s",
                      fp8_frozen_base(model, fast_accum=fast_accum), " (fast accumulation)" if fast_accum else "")


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated transformer blocks (LlamaDecoderLayer & co.): the unit of compile and of FSDP sharding."""
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def compile_decoder_layers(model) -> int:
    """Regional ``torch.compile``: each decoder layer is compiled (one graph reused by all layers),
    mask building and the loss stay eager. Returns how many layers were compiled."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile()
    return len(layers)


def count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
