"""LoRA training on a tiny randomly initialised Llama built on the fly (CPU, a few steps)."""

import math
from pathlib import Path

import pytest
import torch

from tasks.core.settings import load_settings, with_overrides
from tasks.dataset.prompter import Prompter
from tasks.evaluation.scoring import label_loglik, predict_labels
from tasks.training.data import encode_pair, tokenize_records
from tasks.training.model import load_base_model
from tasks.training.tinymodel import build_tiny_llama
from tasks.training.train import train_lora_adapter

PROMPTER = Prompter.load()


def records(n: int, label_of=lambda i: ("POSITIVE", "NEUTRAL", "NEGATIVE")[i % 3]) -> list[dict]:
    return [{"instruction": PROMPTER.instruction, "input": f"day {i}: ETH 1d {'+' if i % 2 else '-'}{i % 7}.0%",
             "output": label_of(i)} for i in range(n)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    corpus = [PROMPTER.prompt(r["instruction"], r["input"]) + r["output"] for r in records(30)] + list(PROMPTER.labels)
    return build_tiny_llama(tmp_path_factory.mktemp("m") / "tiny", corpus, vocab_size=400, hidden_size=32, layers=2,
                            heads=2, seed=0, init_std=0.2)


def test_prompt_is_cut_so_the_response_always_fits(tiny_model):
    tok, _ = load_base_model(str(tiny_model), torch.device("cpu"))
    prompt = PROMPTER.prompt(PROMPTER.instruction, "x " * 500)
    p_ids, r_ids = encode_pair(tok, prompt, "NEGATIVE", cutoff_len=64)
    assert len(p_ids) + len(r_ids) == 64
    assert r_ids[-1] == tok.eos_token_id and tok.decode(r_ids[:-1]) == "NEGATIVE"


def test_loss_only_on_the_response_unless_train_on_inputs(tiny_model):
    tok, _ = load_base_model(str(tiny_model), torch.device("cpu"))
    recs = records(2)
    masked = tokenize_records(tok, PROMPTER, recs, 128, train_on_inputs=False)[0]
    full = tokenize_records(tok, PROMPTER, recs, 128, train_on_inputs=True)[0]
    n_resp = len(tok(recs[0]["output"], add_special_tokens=False)["input_ids"]) + 1
    assert sum(x != -100 for x in masked["labels"]) == n_resp
    assert full["labels"] == full["input_ids"]


def test_training_learns_and_saves_a_loadable_adapter(tiny_model, tmp_path):
    from peft import PeftModel

    cfg = with_overrides(load_settings(), train={"epochs": 12, "batch_size": 8, "micro_batch_size": 4,
                                                 "learning_rate": 5e-3, "cutoff_len": 96, "select_by": "last"}).train
    seen = []
    # Every day says POSITIVE: a model that learns anything must come to prefer it.
    train = records(24, label_of=lambda i: "POSITIVE")
    result = train_lora_adapter(cfg, str(tiny_model), train, records(6), tmp_path / "adapter",
                                log_metrics=lambda m, s: seen.append((s, m)))
    assert math.isfinite(result.train_loss_last) and result.val_loss is not None
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert 0 < result.trainable_share < 0.2 and result.steps == len(seen) - 1
    first, last = seen[0][1]["train_loss"], seen[-2][1]["train_loss"]
    assert last < first
    tok, base = load_base_model(str(tiny_model), torch.device("cpu"))
    model = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    preds, probs = predict_labels(label_loglik(model, tok, PROMPTER, records(6), 96), PROMPTER.labels)
    assert preds == ["POSITIVE"] * 6  # label-likelihood scoring picks the label the model prefers
    assert probs.shape == (6, 3) and abs(probs.sum(axis=1) - 1).max() < 1e-6


def small_cfg(**over):
    return with_overrides(load_settings(), train={"epochs": 2, "batch_size": 4, "micro_batch_size": 2,
                                                  "learning_rate": 5e-3, "cutoff_len": 96, "device": "cpu", **over}).train


def adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_packed_training_matches_padded_training(tiny_model, tmp_path):
    # Same examples, same order, same seed: the fast layout must train the same adapter.
    train, val = records(8), records(3)
    padded = train_lora_adapter(small_cfg(lora_dropout=0.0), str(tiny_model), train, val, tmp_path / "padded")
    packed = train_lora_adapter(small_cfg(lora_dropout=0.0, packing=True), str(tiny_model), train, val, tmp_path / "packed")
    assert packed.steps == padded.steps and abs(packed.train_loss_last - padded.train_loss_last) < 1e-4
    a, b = adapter_weights(tmp_path / "padded"), adapter_weights(tmp_path / "packed")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert packed.tokens_seen == padded.tokens_seen  # real tokens only, in both layouts


class Crash(RuntimeError):
    pass


def test_rows_packed_by_tokens_train_on_every_example_and_count_only_real_tokens(tiny_model, tmp_path, caplog):
    caplog.set_level("INFO", logger="chainsignal")
    train, val = records(12), records(3)
    # Rows of up to 200 tokens hold 2 of these 96-token examples (cutoff_len): 6 rows an epoch;
    # batch 6 -> 3 rows a step, 2 steps an epoch.
    result = train_lora_adapter(small_cfg(packing=True, pack_tokens=200, batch_size=6, micro_batch_size=6, epochs=2),
                                str(tiny_model), train, val, tmp_path / "adapter")
    tok, _ = load_base_model(str(tiny_model), torch.device("cpu"))
    lengths = [len(e["input_ids"]) for e in tokenize_records(tok, PROMPTER, train, 96, False)]
    assert set(lengths) == {96}  # the premise of the counts
    assert result.steps == 4 and math.isfinite(result.train_loss_last)
    assert result.tokens_seen == 2 * sum(lengths)  # every example twice, real tokens only
    assert "micro 200-token rows x accum 3" in caplog.text  # the run's shape, in its first log line
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("packed_rows", [0, 192], ids=["micro-batches", "rows-by-tokens"])
def test_a_crashed_run_resumes_from_its_last_checkpoint(tiny_model, tmp_path, packed_rows):
    train, val = records(8), records(3)
    # 6 steps either way (96-token examples: 2 a row by tokens, 4 rows an epoch, 2 a step);
    # dropout on, so the RNG state must resume too
    cfg = small_cfg(epochs=3, checkpoint_every_steps=2, packing=True, pack_tokens=packed_rows)
    whole = train_lora_adapter(cfg, str(tiny_model), train, val, tmp_path / "whole")

    def crash_after_step_3(metrics, step):
        if step == 3:
            raise Crash("simulated crash")

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Crash):
        train_lora_adapter(cfg, str(tiny_model), train, val, tmp_path / "resumed", crash_after_step_3, checkpoint_dir=ckpt)
    assert (ckpt / "checkpoint.pt").is_file() and not (tmp_path / "resumed").exists()
    steps_logged = []
    resumed = train_lora_adapter(cfg, str(tiny_model), train, val, tmp_path / "resumed",
                                 lambda m, s: steps_logged.append(s), checkpoint_dir=ckpt)
    assert steps_logged[0] == 3  # steps 1-2 came from the checkpoint, step 3 was redone
    assert resumed.steps == whole.steps == 6
    a, b = adapter_weights(tmp_path / "whole"), adapter_weights(tmp_path / "resumed")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not (ckpt / "checkpoint.pt").exists()  # a finished run leaves nothing to resume
    # Different settings never resume someone else's checkpoint.
    with pytest.raises(Crash):
        train_lora_adapter(cfg, str(tiny_model), train, val, tmp_path / "x", crash_after_step_3, checkpoint_dir=ckpt)
    other = []
    train_lora_adapter(cfg.model_copy(update={"lora_r": 4}), str(tiny_model), train, val,
                       tmp_path / "y", lambda m, s: other.append(s), checkpoint_dir=ckpt)
    assert other[0] == 1


def test_gradient_checkpointing_trains_the_same_adapter(tiny_model, tmp_path, monkeypatch):
    """train.gradient_checkpointing recomputes activations in the backward: same arithmetic, so the
    same losses and LoRA weights (dropout off), on the packed path and the padded one."""
    from transformers.models.llama import modeling_llama

    mlp_calls = [0]
    forward = modeling_llama.LlamaMLP.forward

    def counted(self, *args, **kwargs):
        mlp_calls[0] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)  # counts, changes nothing
    train, val = records(8), records(3)
    for packing in (False, True):
        cfg = small_cfg(lora_dropout=0.0, packing=packing)
        plain_losses, ckpt_losses = [], []
        mlp_calls[0] = 0
        plain = train_lora_adapter(cfg, str(tiny_model), train, val, tmp_path / f"plain-{packing}",
                                   lambda m, s: plain_losses.append(m["train_loss"]) if "train_loss" in m else None)
        plain_calls, mlp_calls[0] = mlp_calls[0], 0
        ckpt = train_lora_adapter(cfg.model_copy(update={"gradient_checkpointing": True}), str(tiny_model), train, val,
                                  tmp_path / f"ckpt-{packing}",
                                  lambda m, s: ckpt_losses.append(m["train_loss"]) if "train_loss" in m else None)
        assert plain.steps == ckpt.steps == len(plain_losses) > 1
        assert mlp_calls[0] > plain_calls  # the training forwards ran twice: checkpointing is on
        assert ckpt_losses == pytest.approx(plain_losses, rel=1e-5)
        a, b = adapter_weights(tmp_path / f"plain-{packing}"), adapter_weights(tmp_path / f"ckpt-{packing}")
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
        assert any(float(v.abs().sum()) > 0 for k, v in b.items() if "lora_B" in k)  # it did train


def test_lora_wraps_and_reloads_without_the_deprecation_warning_peft_triggers(tiny_model, tmp_path, recwarn):
    """peft reads ``is_gradient_checkpointing`` whenever it wraps a model, and transformers 5 warns that
    it is deprecated (once per model: in the demo, on every training and scoring run). chainsignal drops
    that one FutureWarning where it wraps models, training and scoring alike."""
    from tasks.evaluation.scoring import CausalScorer

    train_lora_adapter(small_cfg(epochs=1), str(tiny_model), records(4), records(2), tmp_path / "adapter")
    CausalScorer(tmp_path / "adapter", str(tiny_model), 96, "cpu")
    assert not [str(w.message) for w in recwarn if "is_gradient_checkpointing" in str(w.message)]


def test_distributed_path_runs_with_one_process(tiny_model, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        seen = []
        result = train_lora_adapter(small_cfg(distributed=True), str(tiny_model), records(8), records(3),
                                    tmp_path / "adapter", lambda m, s: seen.append(s))
    finally:
        dist.destroy_process_group()
    assert result.steps == 4 and seen[-1] == 4 and result.val_loss is not None
    assert "module." not in " ".join(adapter_weights(tmp_path / "adapter"))  # saved unwrapped, loadable by peft


def test_qlora_off_cuda_is_a_one_line_error(tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"^train.qlora needs a CUDA device") as err:
        train_lora_adapter(small_cfg(qlora=True), str(tiny_model), records(4), [], tmp_path / "a")
    assert "\n" not in str(err.value)


def test_check_train_core_gpu_smoke_cpu(tmp_path):
    """bench/check_train_core_gpu.py: the training core with micro-batch rows and with pack_tokens rows (CPU, no figures)."""
    from tests.bench_smoke import TINY_LLAMA, run_bench_script

    report, _ = run_bench_script("check_train_core_gpu.py", *TINY_LLAMA, "--examples", "48", "--batch", "8",
                                 "--pack-tokens", "1024", "--out", str(tmp_path), report=tmp_path / "train_core_gpu.json")
    runs = report["runs"]
    assert set(runs) == {"rows of micro-batches", "pack_tokens rows"}
    assert runs["rows of micro-batches"]["steps"] == 6  # 48 examples, 8 a step
    assert all(r["steady_tokens_per_s"] > 0 and r["tokens_seen"] > 0 for r in runs.values())
    # one epoch is every example once (the last step may start the next epoch's rows)
    assert runs["pack_tokens rows"]["tokens_seen"] >= runs["rows of micro-batches"]["tokens_seen"]
    assert "CPU smoke test" in (tmp_path / "train_core_gpu.md").read_text()


def test_a_diverging_run_stops_with_one_line_and_checkpoints_only_finite_steps(tiny_model, tmp_path):
    # A non-finite loss stops the run at once: no checkpoint of that step, no adapter.
    cfg = small_cfg(epochs=3, learning_rate=3e37, checkpoint_every_steps=1, packing=True, lora_dropout=0.0)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(FloatingPointError) as err:
        train_lora_adapter(cfg, str(tiny_model), records(8), records(3), tmp_path / "adapter", checkpoint_dir=ckpt)
    assert "\n" not in str(err.value) and "lower train.learning_rate" in str(err.value)
    step = int(str(err.value).split(" at step ")[1].split(";")[0])
    assert step >= 2  # the first step starts from B = 0: finite whatever the learning rate
    state = torch.load(ckpt / "checkpoint.pt", weights_only=False)
    assert state["step"] == step - 1 and not (tmp_path / "adapter").exists()


def test_a_tokenizer_without_a_pad_token_pads_with_eos(tiny_model, tmp_path):
    """Llama tokenizers ship without a pad token: the EOS token pads (and is masked out of the loss)."""
    import shutil

    from transformers import AutoTokenizer

    copy = Path(shutil.copytree(tiny_model, tmp_path / "no-pad"))
    tok = AutoTokenizer.from_pretrained(str(copy))
    tok.pad_token = None
    tok.save_pretrained(str(copy))
    assert AutoTokenizer.from_pretrained(str(copy)).pad_token_id is None  # the premise
    loaded, _ = load_base_model(str(copy), torch.device("cpu"))
    assert loaded.pad_token_id == loaded.eos_token_id is not None
    result = train_lora_adapter(small_cfg(epochs=1), str(copy), records(4), records(2), tmp_path / "adapter")
    assert result.steps >= 1 and math.isfinite(result.train_loss_last)
