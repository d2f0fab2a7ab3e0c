"""LoRA fine-tuning of a causal LM on the Alpaca records (the alpaca-lora recipe, time-split).

This is the training core: it imports torch/transformers/peft but neither prefect nor mlflow,
so it runs the same inside a Prefect flow and on a bare GPU box. Metrics leave through a
callback (``log_metrics``); the flow wires that callback to MLflow.

Reference path: right-padded micro-batches (padded to the longest in the batch), loss on the
response tokens only unless ``train_on_inputs``, gradient accumulation up to ``batch_size``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tasks.core.logs import get_logger, quiet_peft_wrap
from tasks.core.progress import progress
from tasks.dataset.prompter import Prompter
from tasks.training.fastpath.attention import sdpa_without_cudnn
from tasks.training.fastpath.packing import collate_packed, pack_by_tokens, packed_loss

IGNORE_INDEX = -100
MetricsFn = Callable[[dict[str, float], int], None]


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: str
    steps: int
    epochs: float
    examples: int
    train_loss_last: float
    val_loss: float | None
    tokens_seen: int
    tokens_per_s: float
    trainable_params: int
    total_params: int
    trainable_share: float
    peak_memory_mb: float
    seconds: float
    device: str
    world_size: int = 1  # processes that trained together (torchrun / accelerate)
    parallelism: str = "single"  # single, ddp or fsdp
    lora_digest: str | None = None  # sha256 of this process's LoRA weights (DDP replicas must agree); None under FSDP

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def load_base_model(name_or_path: str, device: torch.device, dtype: torch.dtype | None = None, *,
                    attention: str | None = None, qlora: bool = False):
    """Tokenizer and causal LM from a local path or a hub id (cached copy when HF_HUB_OFFLINE=1).

    ``attention`` picks the attention implementation (eager, sdpa, flex_attention); ``qlora``
    loads the frozen base in 4-bit NF4 through bitsandbytes (CUDA only).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:  # Llama tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
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


def encode_pair(tokenizer, prompt: str, response: str, cutoff_len: int, add_eos: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of prompt and response, tokenized separately (training and scoring share this).

    When too long, the prompt is cut from the left of its input so the response always fits.
    """
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        r_ids = r_ids + [tokenizer.eos_token_id]
    room = cutoff_len - len(r_ids)
    if room < 1:
        raise ValueError(f"cutoff_len {cutoff_len} leaves no room for a prompt")
    if len(p_ids) > room:
        p_ids = p_ids[len(p_ids) - room:]
    return p_ids, r_ids


def tokenize_records(tokenizer, prompter: Prompter, records: Sequence[dict[str, Any]], cutoff_len: int,
                     train_on_inputs: bool) -> list[dict[str, list[int]]]:
    out = []
    for r in records:
        p_ids, r_ids = encode_pair(tokenizer, prompter.prompt(r["instruction"], r["input"]), prompter.response(r["output"]), cutoff_len)
        labels = (p_ids if train_on_inputs else [IGNORE_INDEX] * len(p_ids)) + r_ids
        out.append({"input_ids": p_ids + r_ids, "labels": labels})
    return out


def collate(batch: Sequence[dict[str, list[int]]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence in the batch (the reference path)."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


@torch.no_grad()
def evaluate_loss(model, examples: Sequence[dict[str, list[int]]], pad_id: int, micro_batch_size: int, device: torch.device) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), micro_batch_size):
        batch = collate(examples[i:i + micro_batch_size], pad_id, device)
        out = model(**batch)
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(out.loss) * n
        count += n
    model.train()
    return total / max(count, 1)


def count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


CHECKPOINT_FILE = "checkpoint.pt"


def init_distributed(enabled: bool, device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device). ``train.distributed`` joins the process group that
    torchrun (or ``accelerate launch``) set up; a group already initialised by the caller is used as is.
    On CUDA each process takes the GPU of its rank on this host (LOCAL_RANK)."""
    if not enabled:
        return 0, 1, device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")  # env:// rendezvous from the launcher
    rank, world = dist.get_rank(), dist.get_world_size()
    if device.type == "cuda":
        local = dist.get_node_local_rank(fallback_rank=rank)
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return rank, world, device


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated transformer blocks (LlamaDecoderLayer & co.): the unit of compile and of FSDP sharding."""
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def load_base_model_for_fsdp(name_or_path: str, rank: int, dtype: torch.dtype, *, attention: str | None = None):
    """Tokenizer and causal LM for FSDP: rank 0 reads the weights into CPU memory, every other rank
    builds the same architecture on the meta device (no memory). :func:`shard_fsdp` then gives each
    rank its shard of rank 0's weights, so no GPU ever holds the whole model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attention:
        kwargs["attn_implementation"] = attention
    if rank == 0:
        return tokenizer, AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    config = AutoConfig.from_pretrained(name_or_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    return tokenizer, model


def shard_fsdp(model, device: torch.device, rank: int, world: int) -> int:
    """FSDP2: ``fully_shard`` every decoder layer, then the root (embeddings, final norm, head).

    ``model`` holds real weights on rank 0 and meta tensors elsewhere (:func:`load_base_model_for_fsdp`);
    rank 0's full state dict is scattered into the shards and its buffers (rotary frequencies, not
    in the state dict) are broadcast. Returns how many layers were sharded.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    full = model.state_dict() if rank == 0 else {}
    buffers = {name: (b.shape, b.dtype) for name, b in model.named_buffers()}
    mesh = init_device_mesh(device.type, (world,))
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    for name, (shape, dtype) in buffers.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        value = owner._buffers[leaf].to(device) if rank == 0 else torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(value, src=0)
        owner._buffers[leaf] = value
    return len(layers)


def lora_state(model, fsdp: bool, rank: int) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) weights by parameter name, on CPU. Under FSDP every rank must call this
    (the shards are gathered) and only rank 0 gets them; otherwise it is a local copy."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                    ignore_frozen_params=True))
    if rank != 0:
        return {}
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def lora_digest(model) -> str:
    """sha256 over this process's trainable weights: DDP replicas that stayed in sync give the same digest."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def rng_states(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_rng_states(device: torch.device, world: int) -> list[dict[str, Any]]:
    """Every rank's RNG state (dropout draws differ per rank), in rank order."""
    mine = rng_states(device)
    if world == 1:
        return [mine]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, mine)
    return out


def compile_decoder_layers(model) -> int:
    """Regional ``torch.compile``: each decoder layer is compiled (one graph reused by all layers),
    mask building and the loss stay eager. Returns how many layers were compiled."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile()
    return len(layers)


def run_key(cfg: Any, base_model: str, examples: Sequence[dict[str, list[int]]], world: int) -> str:
    """What a checkpoint must match to be resumed: every setting, the base model, the data, the world size."""
    import hashlib

    knobs = cfg.model_dump() if hasattr(cfg, "model_dump") else dict(vars(cfg))
    knobs = {k: v for k, v in knobs.items() if k not in ("log_every_steps", "checkpoint_every_steps")}
    blob = json.dumps([knobs, base_model, world, [e["input_ids"] for e in examples], [e["labels"] for e in examples]],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_checkpoint(ckpt_dir: Path, state: dict[str, Any]) -> Path:
    """Write the resumable state atomically (temporary name, then rename)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp, final = ckpt_dir / (CHECKPOINT_FILE + ".tmp"), ckpt_dir / CHECKPOINT_FILE
    torch.save(state, tmp)
    tmp.replace(final)
    return final


def load_checkpoint(ckpt_dir: Path | None, key: str) -> dict[str, Any] | None:
    if ckpt_dir is None or not (ckpt_dir / CHECKPOINT_FILE).is_file():
        return None
    state = torch.load(ckpt_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    return state if state.get("run_key") == key else None


@sdpa_without_cudnn
def train_lora_adapter(
    cfg: Any,
    base_model: str,
    train_records: Sequence[dict[str, Any]],
    val_records: Sequence[dict[str, Any]],
    out_dir: Path,
    log_metrics: MetricsFn | None = None,
    checkpoint_dir: Path | None = None,
) -> TrainResult:
    """Fine-tune LoRA adapters on ``train_records``; save adapter + tokenizer to ``out_dir``.

    ``cfg`` is a :class:`tasks.core.settings.TrainSettings` (or anything with the same fields).
    Fast path: ``cfg.packing`` (one packed row per micro-batch, document-masked; with
    ``cfg.pack_tokens`` rows of up to that many tokens, best-fit packed each epoch),
    ``cfg.attention``, ``cfg.compile``. With ``checkpoint_dir`` and ``cfg.checkpoint_every_steps``
    the run saves its state every N steps and a rerun with the same settings and data resumes
    from the last checkpoint (the checkpoint is removed once the adapter is saved).

    Under torchrun (``cfg.distributed``) every process runs this function: ``cfg.parallelism``
    "ddp" keeps a replica per process, "fsdp" shards base and LoRA weights over the processes
    (FSDP2, per decoder layer). Each process trains on its own slice of every step's examples;
    the logged loss and tokens/s are over all processes; only rank 0 logs, checkpoints and saves.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    log = get_logger()
    log_metrics = log_metrics or (lambda metrics, step: None)
    t_start = time.perf_counter()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    distributed = getattr(cfg, "distributed", False)
    rank, world, device = init_distributed(distributed, pick_device(cfg.device))
    is_main = rank == 0
    fsdp = distributed and getattr(cfg, "parallelism", "ddp") == "fsdp"
    if cfg.batch_size % (cfg.micro_batch_size * world):
        raise ValueError(f"train.batch_size {cfg.batch_size} must be a multiple of micro_batch_size x processes "
                         f"({cfg.micro_batch_size} x {world})")
    packing = getattr(cfg, "packing", False)
    attention = getattr(cfg, "attention", None)
    qlora = getattr(cfg, "qlora", False)
    dtype = pick_train_dtype(getattr(cfg, "precision", "auto"), device)
    if fsdp and qlora:
        raise ValueError("train.qlora cannot be combined with train.parallelism='fsdp'; use ddp")
    if fsdp:
        tokenizer, model = load_base_model_for_fsdp(base_model, rank, dtype, attention=attention)
    else:
        tokenizer, model = load_base_model(base_model, device, dtype, attention=attention, qlora=qlora)
    grad_ckpt = getattr(cfg, "gradient_checkpointing", False)
    if qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_ckpt,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif grad_ckpt:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns there
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # training: a KV cache would also switch packed document masking off
    with quiet_peft_wrap():
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM",
        ))
    trainable, total = count_params(model)
    if getattr(cfg, "fp8_base", False):
        from tasks.training.fastpath.fp8 import fp8_frozen_base, fp8_supported

        if distributed:
            raise ValueError("train.fp8_base runs in one process for now; set train.nproc=1")
        if not fp8_supported(device):
            raise ValueError(f"train.fp8_base needs fp8 tensor cores (CUDA compute capability 8.9+, e.g. L4, H100); "
                             f"{device} has none: set train.fp8_base=false")
        fast_accum = getattr(cfg, "fp8_fast_accum", False)
        log.info("fp8 base: %d frozen linear layers now run as fp8 GEMMs%s",
                 fp8_frozen_base(model, fast_accum=fast_accum), " (fast accumulation)" if fast_accum else "")
    unwrapped = model
    if getattr(cfg, "compile", False):
        compile_decoder_layers(unwrapped)
    if fsdp:
        shard_fsdp(unwrapped, device, rank, world)
    elif distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    prompter = Prompter.load()
    train_ex = tokenize_records(tokenizer, prompter, train_records, cfg.cutoff_len, cfg.train_on_inputs)
    val_ex = tokenize_records(tokenizer, prompter, val_records, cfg.cutoff_len, cfg.train_on_inputs)
    pack_tokens = getattr(cfg, "pack_tokens", 0) if packing else 0
    if pack_tokens:
        # Rows of up to pack_tokens tokens, not micro_batch_size examples: an optimizer step takes
        # as many rows (per process) as hold about batch_size examples.
        rows_per_epoch = len(pack_by_tokens([len(e["input_ids"]) for e in train_ex], pack_tokens))
        accum = max(1, round(cfg.batch_size * rows_per_epoch / (max(1, len(train_ex)) * world)))
        steps_per_epoch = max(1, math.ceil(rows_per_epoch / (accum * world)))
    else:
        accum = cfg.batch_size // (cfg.micro_batch_size * world)
        steps_per_epoch = max(1, math.ceil(len(train_ex) / cfg.batch_size))
    total_steps = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    params = [p for p in unwrapped.parameters() if p.requires_grad]  # after sharding: FSDP swaps in DTensor shards
    # fused on CUDA (one kernel for all LoRA weights); FSDP's DTensor shards keep the default
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0, fused=device.type == "cuda" and not fsdp)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(cfg.warmup_steps, total_steps - 1), total_steps)
    mode = "fsdp" if fsdp else "ddp" if distributed else "single"
    mean_len = sum(len(e["input_ids"]) for e in train_ex) / max(1, len(train_ex))
    if is_main:
        log.info(
            "train: %d examples (%.0f tokens each on average), %d steps of %d (micro %s x accum %d x %d processes, %s), "
            "device %s %s, attention %s, packing %s, compile %s, trainable %d / %d params (%.3f%%)", len(train_ex),
            mean_len, total_steps, cfg.batch_size, f"{pack_tokens}-token rows" if pack_tokens else cfg.micro_batch_size,
            accum, world, mode, device, dtype, attention, packing, getattr(cfg, "compile", False), trainable, total,
            100 * trainable / total,
        )
    every = getattr(cfg, "checkpoint_every_steps", 0)
    key = run_key(cfg, base_model, train_ex, world)
    gen = random.Random(cfg.seed)
    order: list[int] = []
    step, tokens_seen, last_loss = 0, 0, float("nan")
    state = load_checkpoint(checkpoint_dir, key) if every else None
    if state is not None:
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

            full = StateDictOptions(full_state_dict=True, strict=False)
            set_model_state_dict(unwrapped, state["lora"], options=full)
            set_optimizer_state_dict(unwrapped, optimizer, state["optimizer"], options=full)
        else:
            named = dict(unwrapped.named_parameters())
            with torch.no_grad():
                for name, value in state["lora"].items():
                    named[name].copy_(value)
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, tokens_seen, order = state["step"], state["tokens_seen"], list(state["order"])
        gen.setstate(state["order_rng"])
        ranks_rng = state.get("rng_ranks")
        if ranks_rng and len(ranks_rng) == world:
            torch.set_rng_state(ranks_rng[rank]["cpu"])
            if "cuda" in ranks_rng[rank] and device.type == "cuda":
                torch.cuda.set_rng_state(ranks_rng[rank]["cuda"], device)
        else:
            torch.set_rng_state(state["torch_rng"])
        if is_main:
            log.info("resumed from checkpoint at step %d/%d (%s)", step, total_steps, checkpoint_dir)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Mixed precision as the HF Trainer does it: the LoRA weights stay fp32 (peft's default) and
    # their matmuls run in the base model's half precision. Without it they ran as fp32 SIMT GEMMs
    # on fp32 copies of the activations: 8% of the GPU time in the 7B benchmark (bench/results/train_gpu.md).
    half = dtype in (torch.bfloat16, torch.float16)
    autocast = torch.autocast(device.type, dtype=dtype) if half and device.type == "cuda" else _null()
    model.train()
    bar = progress(total_steps, "train-lora", "step", initial=step, disable=None if is_main else True)
    t_train = time.perf_counter()
    steps_this_run = 0
    per_step = world if pack_tokens else cfg.micro_batch_size * world

    def refill() -> list:
        """The next epoch's units: shuffled example indices, or (pack_tokens) rows of them."""
        fresh = list(range(len(train_ex)))
        gen.shuffle(fresh)
        if not pack_tokens:
            return fresh
        rows = [[fresh[k] for k in row] for row in pack_by_tokens([len(train_ex[i]["input_ids"]) for i in fresh], pack_tokens)]
        gen.shuffle(rows)
        return rows

    pad_to = pack_tokens if pack_tokens and getattr(cfg, "compile", False) else None  # fixed shapes: no recompiles
    while step < total_steps:
        t_step = time.perf_counter()
        step_tokens, step_loss = 0, 0.0
        for micro in range(accum):
            if len(order) < per_step:
                order += refill()
            idx, order = order[:per_step], order[per_step:]
            if pack_tokens:
                mine = [train_ex[i] for i in idx[rank]]
            else:
                mine = [train_ex[i] for i in idx[rank * cfg.micro_batch_size:(rank + 1) * cfg.micro_batch_size]]
            sync = world == 1 or micro == accum - 1
            if fsdp:
                unwrapped.set_requires_gradient_sync(sync)  # FSDP2's no_sync: reduce-scatter once per step
            ctx = model.no_sync() if not sync and hasattr(model, "no_sync") else _null()
            with ctx:
                with autocast:
                    if packing:
                        batch = collate_packed(mine, device, pad_to=pad_to, block_mask=attention == "flex_attention")
                        loss, _ = packed_loss(model, batch)
                        step_tokens += sum(len(e["input_ids"]) for e in mine)  # real tokens, not the row's padding
                    else:
                        batch = collate(mine, tokenizer.pad_token_id, device)
                        loss = model(**batch, use_cache=False).loss
                        step_tokens += int(batch["attention_mask"].sum())
                (loss / accum).backward()
            step_loss += loss.detach() / accum  # stays on the device: one host sync per optimizer step, not per micro-batch
        step_loss = float(step_loss)
        if world > 1:  # what is logged is over every process: mean loss, all tokens
            import torch.distributed as dist

            both = torch.tensor([step_loss, float(step_tokens)], dtype=torch.float64, device=device)
            dist.all_reduce(both)
            step_loss, step_tokens = float(both[0]) / world, int(both[1])
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        steps_this_run += 1
        tokens_seen += step_tokens
        last_loss = step_loss
        dt = time.perf_counter() - t_step
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"train loss became {last_loss} at step {step}; lower train.learning_rate")
        if every and checkpoint_dir is not None and step % every == 0 and step < total_steps:
            # Collective under FSDP (shards gathered) and for the per-rank RNG states: every rank takes part.
            lora = lora_state(unwrapped, fsdp, rank)
            optim = _full_optimizer_state(unwrapped, optimizer) if fsdp else optimizer.state_dict()
            rngs = gather_rng_states(device, world)
            if is_main:
                save_checkpoint(checkpoint_dir, {
                    "run_key": key, "step": step, "tokens_seen": tokens_seen, "order": order, "order_rng": gen.getstate(),
                    "torch_rng": torch.get_rng_state(), "rng_ranks": rngs, "optimizer": optim,
                    "scheduler": scheduler.state_dict(), "lora": lora,
                })
        bar.update(1)
        bar.set_postfix_str(f"loss {last_loss:.4f}, {step_tokens / dt:,.0f} tok/s", refresh=False)
        if is_main and (step % cfg.log_every_steps == 0 or step == total_steps):
            metrics = {"train_loss": last_loss, "learning_rate": scheduler.get_last_lr()[0],
                       "tokens_per_s": step_tokens / dt, "step_time_s": dt}
            log_metrics(metrics, step)
            log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s %.2fs", step, total_steps, last_loss,
                     metrics["learning_rate"], metrics["tokens_per_s"], dt)
    bar.close()
    train_seconds = time.perf_counter() - t_train
    val_loss = None
    if val_ex and (is_main or fsdp):  # a sharded model only runs forward with every rank taking part
        val_loss = evaluate_loss(unwrapped, val_ex, tokenizer.pad_token_id, cfg.micro_batch_size, device)
        if is_main:
            log_metrics({"val_loss": val_loss}, step)
            log.info("validation loss %.4f", val_loss)
        else:
            val_loss = None
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb()
    result = TrainResult(
        adapter_dir=str(out_dir), steps=step, epochs=step / steps_per_epoch, examples=len(train_ex),
        train_loss_last=last_loss, val_loss=val_loss, tokens_seen=tokens_seen,
        tokens_per_s=tokens_seen / max(train_seconds, 1e-9) if steps_this_run else 0.0, trainable_params=trainable,
        total_params=total, trainable_share=trainable / total, peak_memory_mb=peak,
        seconds=time.perf_counter() - t_start, device=str(device), world_size=world, parallelism=mode,
        lora_digest=None if fsdp else lora_digest(unwrapped),
    )
    adapter_state = lora_state(unwrapped, fsdp, rank) if fsdp else None  # FSDP: gathered on rank 0
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        unwrapped.save_pretrained(out_dir, state_dict=adapter_state)
        tokenizer.save_pretrained(out_dir)
        (out_dir / "chainsignal_train.json").write_text(json.dumps({"base_model": base_model, **result.as_dict()}, indent=2))
        if checkpoint_dir is not None and (checkpoint_dir / CHECKPOINT_FILE).is_file():
            (checkpoint_dir / CHECKPOINT_FILE).unlink()  # finished: the next run starts fresh
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return result


def _full_optimizer_state(model, optimizer) -> dict[str, Any]:
    """FSDP: the optimizer state gathered to full tensors on rank 0 (keyed by parameter name)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _null():
    from contextlib import nullcontext

    return nullcontext()


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
