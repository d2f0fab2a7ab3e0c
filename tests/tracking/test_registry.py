"""Adapters in the MLflow registry: the champion alias and the download-by-alias round trip."""

from pathlib import Path

import pytest
import torch

from tasks.core.settings import load_settings, with_overrides
from tasks.dataset.prompter import Prompter
from tasks.tracking.champion import Candidate, promote_if_better
from tasks.tracking.tracker import MlflowTracker, base_model_sha256, run_base_model
from tasks.training.tinymodel import build_tiny_llama
from tasks.training.train import load_base_model, train_lora_adapter

PROMPTER = Prompter.load()


def records(n: int) -> list[dict]:
    return [{"instruction": PROMPTER.instruction, "input": f"day {i}: ETH 1d +{i % 5}.0%",
             "output": PROMPTER.labels[i % 3]} for i in range(n)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    corpus = [PROMPTER.prompt(r["instruction"], r["input"]) + r["output"] for r in records(20)]
    return build_tiny_llama(tmp_path_factory.mktemp("m") / "tiny", corpus, vocab_size=300, hidden_size=32, layers=2,
                            heads=2, seed=0, init_std=0.2)


def test_champion_moves_only_on_a_better_score_and_round_trips(tiny_model, tmp_path):
    from peft import PeftModel

    cfg = with_overrides(load_settings(), train={"epochs": 1, "batch_size": 4, "micro_batch_size": 4, "cutoff_len": 64,
                                                 "device": "cpu"}).train
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "registry-test", tmp_path / "art", "chainsignal-lora")
    versions = []
    for i in range(4):
        out = tmp_path / f"adapter{i}"
        train_lora_adapter(cfg, str(tiny_model), records(8), [], out)
        with tracker.run(run_name=f"lora-{i}", tags={"model_kind": "lora"}) as run_id:
            tracker.log_artifacts(out, "adapter")
        versions.append(tracker.register_adapter(run_id, "adapter", {}))
    assert tracker.champion() is None
    rescored = []

    def champion_score(scores):
        def score(mv):
            rescored.append(str(mv.version))
            return scores[str(mv.version)]
        return score

    d = promote_if_better(tracker, versions[0], Candidate(0.50, 0.40, True, "beats"))
    assert d["promoted"] and str(tracker.champion().version) == versions[0]
    # Beats the baselines but not the champion (re-scored on this split): stays.
    d = promote_if_better(tracker, versions[1], Candidate(0.45, 0.40, True, "beats"), champion_score({versions[0]: 0.50}))
    assert not d["promoted"] and "champion" in d["reason"] and str(tracker.champion().version) == versions[0]
    # Beats the champion but not the baselines by the verdict rule (on validation): stays.
    d = promote_if_better(tracker, versions[2], Candidate(0.55, 0.50, False, "LoRA shows no skill on 13 validation days"),
                          champion_score({versions[0]: 0.50}))
    assert not d["promoted"] and "baseline" in d["reason"] and str(tracker.champion().version) == versions[0]
    # Beats both: moves.
    d = promote_if_better(tracker, versions[3], Candidate(0.55, 0.40, True, "beats"), champion_score({versions[0]: 0.50}))
    assert d["promoted"] and str(tracker.champion().version) == versions[3]
    assert rescored == [versions[0]] * 3
    tags = tracker.client.get_model_version("chainsignal-lora", versions[1]).tags
    assert tags["champion_promoted"] == "False"

    # Round trip: download by alias -> PeftModel.from_pretrained -> the same logits as the trained adapter.
    local = tracker.download_alias("champion", tmp_path / "dl")
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    logits = []
    for path in (local, tmp_path / "adapter3"):
        tok, base = load_base_model(str(tiny_model), torch.device("cpu"))
        model = PeftModel.from_pretrained(base, str(path)).eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    assert torch.equal(logits[0], logits[1])
    tok, base = load_base_model(str(tiny_model), torch.device("cpu"))
    with torch.no_grad():
        assert (base(input_ids=ids).logits - logits[0]).abs().max() > 0  # the adapter actually changes the model


def test_base_model_hash_follows_the_weights_and_guards_the_reload(tiny_model, tmp_path):
    """The run records its base model's hash; loading the adapter on other weights is refused."""
    import shutil

    copy = Path(shutil.copytree(tiny_model, tmp_path / "base"))
    cache = tmp_path / "sha256-cache.json"
    first = base_model_sha256(str(copy), cache)
    assert first == base_model_sha256(str(copy), cache) == base_model_sha256(str(tiny_model))  # content, not place
    assert base_model_sha256("no/such-model-anywhere") == "unknown"

    settings = with_overrides(load_settings(), train={"base_model": str(copy)})
    tracker = MlflowTracker.from_settings(settings, tmp_path / "mlartifacts")
    with tracker.run(run_name="hash", tags={"base_model_sha256": first}) as run_id:
        tracker.log_params(settings.flat_params())
    run = tracker.client.get_run(run_id)
    assert run_base_model(tracker, run, tmp_path / "dl", cache) == (str(copy), "causal")

    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))  # same size, other weights
    assert base_model_sha256(str(copy), cache) != first  # the cache is keyed by mtime too
    with pytest.raises(ValueError, match="is not the one run") as err:
        run_base_model(tracker, run, tmp_path / "dl", cache)
    assert "\n" not in str(err.value)


def test_the_champion_is_rescored_on_the_newest_dataset_version(lake_copy, data_dir):
    """Flow level: a champion trained on an older dataset version is judged on the new version's
    validation split before a new run may take its alias."""
    from datetime import date

    from flows.build_dataset import build_dataset
    from flows.train_lora import train_lora
    from tasks.evaluation.evaluate import evaluate_adapter
    from tasks.tracking.champion import CHAMPION

    old = build_dataset(end=date(2021, 2, 28))
    first = train_lora(epochs=1, batch_size=16, micro_batch_size=16, run_evaluation=False)
    settings = load_settings()
    tracker = MlflowTracker.from_settings(settings, data_dir / "mlartifacts")
    tracker.client.set_registered_model_alias(settings.tracking.registered_model, CHAMPION, first["version"])

    new = build_dataset()  # a later end date: a new dataset version
    assert new["fingerprint"] != old["fingerprint"]
    second = train_lora(epochs=1, batch_size=16, micro_batch_size=16)
    rescored = second["evaluation"]["champion_rescored"]
    assert rescored["version"] == first["version"]

    # the same number, computed here: the champion's adapter on the NEW version's validation split
    run = tracker.client.get_run(first["run_id"])
    base, _ = run_base_model(tracker, run, data_dir / "check")
    report = evaluate_adapter(data_dir / "runs" / first["run_id"] / "adapter", base,
                              data_dir / "datasets" / new["task"] / new["fingerprint"],
                              cutoff_len=int(run.data.params["train.cutoff_len"]), seed=int(run.data.params["dataset.seed"]),
                              plots_dir=data_dir / "check" / "plots")
    assert rescored["validation_macro_f1"] == pytest.approx(report["metrics"]["validation_macro_f1"], abs=1e-9)
    tags = tracker.client.get_model_version(settings.tracking.registered_model, second["version"]).tags
    assert tags["champion_previous_champion"] == first["version"]
    assert float(tags["champion_champion_score"]) == pytest.approx(rescored["validation_macro_f1"])
