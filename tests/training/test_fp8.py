"""The fp8 frozen base (tasks/training/fastpath/fp8.py, train.fp8_base) on CPU, where torch._scaled_mm runs too: the same products
and input gradients as the bf16 layer within fp8's resolution, the LoRA weights untouched and
still trained, and the whole tiny Llama's loss and LoRA gradients close to its bf16 twin's."""

import pytest
import torch
from torch import nn

from tasks.training.fastpath.fp8 import E4M3, Fp8Linear, fp8_frozen_base, quantize_rows


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


def test_quantize_rows_scales_each_row_to_the_fp8_range():
    x = torch.tensor([[1.0, -2.0, 0.5, 0.0], [1000.0, 10.0, -3000.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    q, scale = quantize_rows(x)
    assert q.dtype == E4M3 and scale.shape == (3, 1)
    assert q.float().abs().amax(dim=1).tolist() == [448.0, 448.0, 0.0]  # each row's largest value maps to e4m3's max
    back = q.float() * scale
    assert torch.allclose(back[:2], x[:2], rtol=0.07)  # 3 mantissa bits: <= 6.25% per element
    assert torch.equal(back[2], x[2])  # an all-zero row stays zero (no division by zero)


def test_fp8_linear_matches_the_bf16_layer_forward_and_input_gradient():
    torch.manual_seed(0)
    lin = nn.Linear(256, 96, bias=True).to(torch.bfloat16).requires_grad_(False)
    fp8 = Fp8Linear(lin)
    x = torch.randn(3, 37, 256, dtype=torch.bfloat16)  # 111 rows: not a multiple of 16 (padded inside)
    x[0, 0] *= 50  # one outlier token: per-row scales keep the others' resolution
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y = lin(x1), fp8(x2)
    assert y.shape == y_ref.shape == (3, 37, 96) and y.dtype == torch.bfloat16
    assert rel(y, y_ref) < 0.05 and rel(y[1:], y_ref[1:]) < 0.05
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y.backward(g)
    assert x2.grad.shape == x.shape and rel(x2.grad, x1.grad) < 0.05
    assert not any(p.requires_grad for p in fp8.parameters())
    assert rel(fp8.weight, lin.weight) < 0.05  # the dequantized view


@pytest.mark.parametrize("backend,fast_accum", [("aot_eager", False), ("inductor", False), ("inductor", True)])
def test_compiled_fp8_linear_gives_the_eager_input_gradient(backend, fast_accum):
    """The fp8 products are custom operators with their autograd registered, so torch.compile keeps
    them whole (fullgraph: no graph break) and the backward still runs them. Written as an
    autograd.Function they once compiled, on an H100, to an input gradient of exactly zero
    (bench/results/train_fp8_gpu.md); on CPU that form happened to stay right, so this test guards
    the form, and bench/check_train_fp8_gpu.py the GPU."""
    torch.manual_seed(0)
    lin = nn.Linear(128, 64, bias=False).to(torch.bfloat16).requires_grad_(False)
    layer = Fp8Linear(lin, fast_accum=fast_accum)  # the flag is an operator argument (a no-op on CPU)
    assert ("fast_accum" in repr(layer)) == fast_accum
    x = torch.randn(2, 40, 128, dtype=torch.bfloat16)
    g = torch.randn(2, 40, 64, dtype=torch.bfloat16)
    x_eager, x_comp = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_eager = layer(x_eager)
    torch._dynamo.reset()
    y_comp = torch.compile(layer, backend=backend, fullgraph=True)(x_comp)
    y_eager.backward(g)
    y_comp.backward(g)
    assert torch.equal(y_comp, y_eager)
    assert float(x_comp.grad.float().norm()) > 0 and rel(x_comp.grad, x_eager.grad) < 1e-2
    assert torch.ops.chainsignal.fp8_linear.default is not None  # registered, opaque to the compiler


def test_fp8_linear_refuses_unaligned_sizes():
    with pytest.raises(ValueError, match="divisible by 16"):
        Fp8Linear(nn.Linear(100, 64))
    model = nn.Sequential(nn.Linear(64, 100), nn.Linear(100, 32), nn.Linear(32, 64)).requires_grad_(False)
    assert fp8_frozen_base(model) == 1  # the unaligned layers stay as they are
    assert [type(m).__name__ for m in model] == ["Linear", "Linear", "Fp8Linear"]


def test_fp8_base_on_a_lora_llama_keeps_loss_and_lora_gradients():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, use_cache=False)
    base = LlamaForCausalLM(cfg).to(torch.bfloat16)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    ref = get_peft_model(base, lora)
    for name, p in ref.named_parameters():
        if "lora_B" in name:  # B = 0 at init would make the q/v LoRA gradients of A vanish
            nn.init.normal_(p, std=0.02)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    model = get_peft_model(LlamaForCausalLM(cfg).to(torch.bfloat16), lora)
    model.load_state_dict(state)
    converted = fp8_frozen_base(model)
    # 2 layers x (q, k, v, o, gate, up, down) = 14; lm_head and the LoRA A/B layers stay
    assert converted == 14
    assert type(model.base_model.model.lm_head) is nn.Linear
    assert type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer) is Fp8Linear
    assert type(model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"]) is nn.Linear
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(
        p.numel() for p in ref.parameters() if p.requires_grad)

    ids = torch.randint(0, 512, (2, 96))
    losses, grads = [], []
    for m in (ref, model):
        out = m(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        losses.append(float(out.loss.detach()))
        grads.append(torch.cat([p.grad.float().flatten() for n, p in m.named_parameters() if p.requires_grad]))
    assert abs(losses[1] - losses[0]) < 0.02 * losses[0]
    cos = float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0))
    print(f"loss bf16 {losses[0]:.4f} fp8 {losses[1]:.4f}, LoRA gradient cosine {cos:.4f}")
    assert cos > 0.95, cos


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tasks.dataset.prompter import Prompter
    from tasks.training.tinymodel import build_tiny_llama

    p = Prompter.load()
    corpus = [p.prompt(p.instruction, f"day {i}") + lab for i in range(30) for lab in p.labels]
    return build_tiny_llama(tmp_path_factory.mktemp("m") / "tiny", corpus, vocab_size=400, hidden_size=32, layers=2,
                            heads=2, seed=0, init_std=0.2)


def test_train_lora_with_an_fp8_base_learns_an_adapter_that_loads_on_the_plain_base(tiny_model, tmp_path):
    """train.fp8_base through the real training core: the loss falls, and the adapter, saved like any
    other, makes the plain (unquantized) base prefer the label it was taught."""
    from peft import PeftModel

    from tasks.core.settings import load_settings, with_overrides
    from tasks.dataset.prompter import Prompter
    from tasks.evaluation.scoring import label_loglik, predict_labels
    from tasks.training.model import load_base_model
    from tasks.training.train import train_lora_adapter

    p = Prompter.load()
    recs = [{"instruction": p.instruction, "input": f"day {i}", "output": "POSITIVE"} for i in range(24)]
    cfg = with_overrides(load_settings(), train={"epochs": 12, "batch_size": 8, "micro_batch_size": 4, "learning_rate": 5e-3,
                                                 "cutoff_len": 96, "device": "cpu", "fp8_base": True,
                                                 "select_by": "last"}).train
    seen = []
    result = train_lora_adapter(cfg, str(tiny_model), recs, recs[:6], tmp_path / "adapter", log_metrics=lambda m, s: seen.append(m))
    losses = [m["train_loss"] for m in seen if "train_loss" in m]
    assert result.steps == 36 and losses[-1] < losses[0]
    tok, base = load_base_model(str(tiny_model), torch.device("cpu"))
    model = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    preds, _ = predict_labels(label_loglik(model, tok, p, recs[:6], 96), p.labels)
    assert preds == ["POSITIVE"] * 6


def test_fp8_base_settings_refuse_what_is_not_supported():
    from tasks.core.settings import SettingsError, load_settings, with_overrides

    with pytest.raises(SettingsError, match="pick one"):
        with_overrides(load_settings(), train={"fp8_base": True, "qlora": True})
    with pytest.raises(SettingsError, match="causal kind"):
        with_overrides(load_settings(), train={"fp8_base": True, "model_kind": "encoder"})
    with pytest.raises(SettingsError, match="one process"):
        with_overrides(load_settings(), train={"fp8_base": True, "nproc": 2, "batch_size": 16, "micro_batch_size": 8})
    with pytest.raises(SettingsError, match="fp8_base=true as well"):
        with_overrides(load_settings(), train={"fp8_fast_accum": True})


def test_check_train_fp8_gpu_smoke_cpu(tmp_path):
    """bench/check_train_fp8_gpu.py: the three trainings through the real core, each adapter scored on the plain base (CPU, no figures)."""
    from tests.bench_smoke import TINY_LLAMA, run_bench_script

    report, _ = run_bench_script("check_train_fp8_gpu.py", *TINY_LLAMA, "--examples", "32", "--epochs", "1", "--micro-batch", "8",
                              "--out", str(tmp_path), report=tmp_path / "train_fp8_gpu.json")
    runs = report["runs"]
    assert set(runs) == {"bf16 base", "fp8 base", "fp8 base, fast accumulation"} and all(r["steps"] == 4 for r in runs.values())
    assert all(0 <= r["accuracy_on_bf16_base"] <= 1 and r["val_loss_on_bf16_base"] > 0 for r in runs.values())
    assert abs(runs["fp8 base"]["val_loss"] - runs["bf16 base"]["val_loss"]) < 0.05  # 4 steps from the same init
    assert "| fp8 base |" in (tmp_path / "train_fp8_gpu.md").read_text()
    assert set(report["prediction_agreement"]) == {"fp8 base", "fp8 base, fast accumulation"}


def test_fp8_training_parity_bench_smoke_cpu(tmp_path):
    """bench/fp8_training_parity.py runs both precisions in subprocesses and writes its report (CPU, no figures)."""
    import json

    from tests.bench_smoke import run_bench_script

    run_bench_script("fp8_training_parity.py", "--device", "cpu", "--layers", "2", "--hidden", "256", "--steps", "3",
                     "--examples", "40", "--pack-tokens", "512", "--out", str(tmp_path))
    bf16, fp8 = (json.loads((tmp_path / f"fp8_parity_{p}.json").read_text()) for p in ("bf16", "fp8"))
    assert bf16["fp8_layers"] == 0 and fp8["fp8_layers"] == 14 and len(fp8["train_loss"]) == 3
    assert 0 < bf16["floor"] < bf16["held_out_loss"] and abs(fp8["train_loss"][0] - bf16["train_loss"][0]) < 0.1
    assert "| fp8 train loss |" in (tmp_path / "fp8_parity.md").read_text()


def test_fp8_layer_bench_smoke_cpu():
    """bench/bench_fp8_layer.py on CPU: every variant, eager and compiled, reports a live input gradient (no figures)."""
    import re

    from tests.bench_smoke import run_bench_script

    _, out = run_bench_script("bench_fp8_layer.py", "--device", "cpu", "--repeats", "1")
    found = [(float(err), float(norm)) for err, norm in re.findall(r"input-grad rel err ([0-9.]+) \(norm ([0-9.e+]+)", out)]
    assert len(found) == 6 and all(err < 0.05 and norm > 0 for err, norm in found), out


def test_compiled_layer_quantizes_a_shared_input_once(monkeypatch):
    """q, k and v read the same hidden states: compiled, their fp8 products share one quantization
    of it (the quantizer is its own pure operator, merged by the compiler); the backward still
    quantizes each output gradient, and the results are the eager ones."""
    import tasks.training.fastpath.fp8 as fp8

    torch.manual_seed(0)
    projs = nn.ModuleList(Fp8Linear(nn.Linear(64, 32, bias=False).requires_grad_(False)) for _ in range(3))

    def qkv(x):
        return sum(p(x).float().square().sum() for p in projs)

    calls = []
    real = fp8._quantize
    monkeypatch.setattr(fp8, "_quantize", lambda a: calls.append(tuple(a.shape)) or real(a))
    x = torch.randn(40, 64)
    x_eager, x_comp = x.clone().requires_grad_(), x.clone().requires_grad_()
    qkv(x_eager).backward()
    eager_calls, calls[:] = len(calls), []
    torch._dynamo.reset()
    torch.compile(qkv, backend="inductor", fullgraph=True)(x_comp).backward()
    assert eager_calls == 6  # 3 inputs + 3 output gradients
    assert len(calls) == 4  # 1 shared input + 3 output gradients
    assert rel(x_comp.grad, x_eager.grad) < 1e-2
