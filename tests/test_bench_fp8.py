"""The fp8 frozen base of the GPU benchmark (bench/fp8_base.py) on CPU, where torch._scaled_mm runs too: the same products
and input gradients as the bf16 layer within fp8's resolution, the LoRA weights untouched and
still trained, and the whole tiny Llama's loss and LoRA gradients close to its bf16 twin's."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from fp8_base import E4M3, Fp8Linear, fp8_frozen_base, quantize_rows  # noqa: E402


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


def test_fp8_linear_refuses_unaligned_sizes():
    with pytest.raises(ValueError, match="divisible by 16"):
        Fp8Linear(nn.Linear(100, 64))


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
        losses.append(float(out.loss))
        grads.append(torch.cat([p.grad.float().flatten() for n, p in m.named_parameters() if p.requires_grad]))
    assert abs(losses[1] - losses[0]) < 0.02 * losses[0]
    cos = float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0))
    print(f"loss bf16 {losses[0]:.4f} fp8 {losses[1]:.4f}, LoRA gradient cosine {cos:.4f}")
    assert cos > 0.95, cos
