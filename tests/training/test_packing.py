"""Packed rows with document masking vs each example alone, and packed vs padded loss (CPU)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tasks.training.data import collate
from tasks.training.fastpath.packing import IGNORE_INDEX, collate_packed, document_ids, pack_by_tokens, packed_loss

LENGTHS = (9, 17, 4, 23)


@pytest.fixture(scope="module")
def weights() -> tuple[LlamaConfig, dict]:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=211, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.2)
    return cfg, LlamaForCausalLM(cfg).state_dict()


def model_with(weights, attention: str) -> LlamaForCausalLM:
    cfg, state = weights
    model = LlamaForCausalLM._from_config(cfg, attn_implementation=attention)
    model.load_state_dict(state)
    return model.eval()


def examples(seed: int, prompt_len: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in LENGTHS:
        ids = torch.randint(4, 211, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * min(prompt_len, n - 1) + ids[min(prompt_len, n - 1):]})
    return out


def test_collate_packed_layout():
    exs = examples(1)
    b = collate_packed(exs)
    assert b["input_ids"].shape == (1, sum(LENGTHS))
    assert b["position_ids"][0].tolist() == [i for n in LENGTHS for i in range(n)]
    assert document_ids(b["position_ids"])[0].tolist() == [k for k, n in enumerate(LENGTHS) for _ in range(n)]
    starts = [sum(LENGTHS[:k]) for k in range(len(LENGTHS))]
    assert all(b["labels"][0, s] == IGNORE_INDEX for s in starts)  # nothing predicted across a boundary
    nxt = b["labels"][0, 1:]  # the on-device way (nonzero) gives what collate computed on the host
    keep = (nxt != IGNORE_INDEX).nonzero().squeeze(-1)
    targets = nxt[keep]
    assert b["keep"].tolist() == keep.tolist() and b["targets"].tolist() == targets.tolist()
    with pytest.raises(ValueError, match="same, non-zero length"):
        collate_packed([{"input_ids": [1, 2], "labels": [1]}])


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_row_logits_equal_each_example_alone(weights, attention):
    model = model_with(weights, attention)
    exs = examples(2)
    b = collate_packed(exs)
    with torch.no_grad():
        packed = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([e["input_ids"]]), use_cache=False).logits[0] for e in exs])
        leaky = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=True).logits[0]
    assert torch.allclose(packed, alone, atol=1e-4), (packed - alone).abs().max()
    # The trap measured in issue #7: with the KV cache on, the document mask is silently dropped.
    assert (leaky - alone).abs().max() > 1e-2


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_and_padded_give_the_same_loss_and_gradients(weights, attention):
    exs = examples(3)
    losses, grads = [], []
    for packed in (True, False):
        model = model_with(weights, attention).train()
        if packed:
            loss, n = packed_loss(model, collate_packed(exs))
            assert n == sum(sum(x != IGNORE_INDEX for x in e["labels"][1:]) for e in exs)
        else:
            loss = model(**collate(exs, 0, torch.device("cpu")), use_cache=False).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert abs(losses[0] - losses[1]) < 1e-5, losses
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_document_block_mask_matches_each_example_alone(weights):
    """The BlockMask we build (flex_attention, passed as attention_mask) isolates the examples."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    from tasks.training.fastpath.packing import document_block_mask

    model = model_with(weights, "flex_attention")
    exs = examples(4)
    b = collate_packed(exs, block_mask=True)
    with torch.no_grad():
        packed = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False,
                       attention_mask=b["block_mask"]).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([e["input_ids"]]), use_cache=False).logits[0] for e in exs])
        # the model really uses the mask passed in: a plain causal one (one document) leaks across examples
        one_doc = document_block_mask(torch.arange(b["input_ids"].shape[1]).unsqueeze(0))
        leaky = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False, attention_mask=one_doc).logits[0]
    assert torch.allclose(packed, alone, atol=1e-4), (packed - alone).abs().max()
    assert (leaky - alone).abs().max() > 1e-2


def arrival_order_rows(lengths: list[int], capacity: int) -> int:
    """How many rows filling one row at a time in arrival order takes (what pack_by_tokens improves on)."""
    rows, used = 1, 0
    for n in lengths:
        if used + n > capacity:
            rows, used = rows + 1, 0
        used += n
    return rows


def test_pack_by_tokens_places_every_example_once_in_fewer_fuller_rows():
    import random

    rng = random.Random(3)
    lengths = [int(min(512, max(64, rng.lognormvariate(5.3, 0.55)))) for _ in range(600)]  # alpaca-like
    rows = pack_by_tokens(lengths, 2048)
    assert sorted(i for row in rows for i in row) == list(range(600))
    used = [sum(lengths[i] for i in row) for row in rows]
    assert max(used) <= 2048 and used == sorted(used, reverse=True)
    assert len(rows) < arrival_order_rows(lengths, 2048)
    assert sum(used[:-1]) / (2048 * (len(rows) - 1)) > 0.98  # all but the last row nearly full
    assert pack_by_tokens(lengths, 2048) == rows  # deterministic


def test_pack_by_tokens_refuses_an_example_longer_than_a_row():
    with pytest.raises(ValueError, match="300 tokens does not fit a packed row of 256"):
        pack_by_tokens([10, 300, 20], 256)
