"""The console script as a user runs it (subprocesses)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "chainsignal"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})})


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("ingest", "build-dataset", "train", "evaluate", "daily", "demo", "settings"):
        assert cmd in out.stdout


def test_train_help_lists_the_alpaca_lora_knobs():
    out = run("train", "--help")
    assert out.returncode == 0
    for option in ("--lora-r", "--lora-alpha", "--lora-dropout", "--target-module", "--train-on-inputs",
                   "--batch-size", "--micro-batch-size", "--epochs", "--learning-rate", "--cutoff-len", "--seed"):
        assert option in out.stdout, option


def test_version_prints_the_stack():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("chainsignal 0.1.0")
    for pkg in ("prefect", "mlflow", "polars", "transformers", "peft", "torch"):
        assert f"{pkg} " in out.stdout


def test_bad_setting_is_one_line_error():
    out = run("settings", env={"CHAINSIGNAL_TRAIN__LORA_R": "-3"})
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "bad setting train.lora_r" in out.stderr


def test_settings_hides_the_key():
    out = run("settings", env={"CHAINSIGNAL_RPC__API_KEY": "abc-secret-987"})
    assert out.returncode == 0 and "abc-secret-987" not in out.stdout and '"api_key_set": true' in out.stdout


def test_unreachable_endpoint_is_one_line_and_writes_nothing(tmp_path):
    out = run("ingest", "--only", "chain", "--start", "2021-01-01", "--rpc-url", "http://127.0.0.1:9",
              env={"CHAINSIGNAL_RPC__MAX_RETRIES": "1", "CHAINSIGNAL_RPC__BACKOFF_INITIAL_S": "0.01",
                   "CHAINSIGNAL_STORAGE__DATA_DIR": str(tmp_path / "d")})
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("chainsignal: error:")]
    assert len(errors) == 1 and "cannot connect" in errors[0]
    assert not (tmp_path / "d" / "lake" / "transactions").exists() or not any((tmp_path / "d" / "lake" / "transactions").rglob("*.parquet"))


def test_a_mistyped_variable_is_one_line_and_exit_2():
    out = run("settings", env={"CHAINSIGNAL_RPC_URL": "https://mainnet.infura.io/v3/{api_key}"})
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == ("chainsignal: error: unknown setting variable CHAINSIGNAL_RPC_URL: did you mean "
                                  "CHAINSIGNAL_RPC__URL? (sections and fields are joined by a double underscore)")


def test_settings_never_print_a_short_key_pasted_into_the_url():
    out = run("settings", env={"CHAINSIGNAL_RPC__URL": "https://mainnet.infura.io/v3/SECRETKEYABC"})
    assert out.returncode == 0, out.stderr
    assert "SECRETKEYABC" not in out.stdout + out.stderr and '"api_key_set": true' in out.stdout


def test_help_uses_real_placeholders_and_names_the_training_defaults():
    """Every command's help: DATE / INTEGER / TEXT placeholders, never <%Y-%m-%d> or <bool>; each training knob
    says its default and the setting it comes from."""
    commands = ("ingest", "build-dataset", "train", "evaluate", "daily", "predict", "backfill", "status", "up")
    for cmd in commands:
        out = run(cmd, "--help")
        assert out.returncode == 0 and "<" not in out.stdout, (cmd, out.stdout)
    train = " ".join(run("train", "--help").stdout.split())
    assert "--start DATE" in " ".join(run("ingest", "--help").stdout.split())
    assert "--lora-r INTEGER LoRA rank; per kind. [default: causal 8, encoder 16, from train.lora_r]" in train
    from tasks.core.settings import TRAIN_KIND_DEFAULTS

    rates = {kind: TRAIN_KIND_DEFAULTS[kind]["learning_rate"] for kind in ("causal", "encoder")}
    assert f"[default: causal {rates['causal']}, encoder {rates['encoder']}, from train.learning_rate]" in train


def test_a_causal_only_flag_given_to_the_encoder_kind_is_refused_in_one_line(tmp_path):
    """--micro-batch-size means nothing to the encoder kind (it takes batch_size at once): refused, exit 2,
    before anything is read or trained; --learning-rate applies to both kinds and is not refused."""
    out = run("train", "--model-kind", "encoder", "--micro-batch-size", "4",
              env={"CHAINSIGNAL_STORAGE__DATA_DIR": str(tmp_path / "d")})
    errors = [line for line in out.stderr.splitlines() if line.startswith("chainsignal: error:")]
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-2000:]
    assert "train.micro_batch_size applies to the causal kind only" in errors[0] and "Traceback" not in out.stderr
    lr = run("settings", env={"CHAINSIGNAL_TRAIN__MODEL_KIND": "encoder", "CHAINSIGNAL_TRAIN__LEARNING_RATE": "0.0007"})
    assert lr.returncode == 0 and '"learning_rate": 0.0007' in lr.stdout and '"base_model": "minilm"' in lr.stdout


@pytest.mark.parametrize("option, default, wrong, error", [
    ("--encoder-lora-layers INTEGER", "[default: 0, from train.encoder_lora_layers]",
     ("--model-kind", "causal", "--encoder-lora-layers", "2"), "train.encoder_lora_layers applies to the encoder kind only"),
    ("--precision TEXT", "[default: auto, from train.precision]", ("--model-kind", "encoder", "--precision", "fp16"), "precision"),
])
def test_a_training_option_on_the_cli_names_its_default_and_a_wrong_use_is_one_line(tmp_path, option, default, wrong, error):
    """--encoder-lora-layers and --precision (train and walk-forward) name their defaults; the first given to the causal
    kind, or a precision outside auto/bf16/fp32, is one line, exit 2, for either command, before anything is read or
    trained; the batch size help names both kinds' defaults."""
    env = {"CHAINSIGNAL_STORAGE__DATA_DIR": str(tmp_path / "d")}
    for command in ("train", "walk-forward"):
        helptext = " ".join(run(command, "--help").stdout.split())
        assert option in helptext and default in helptext
        out = run(command, *wrong, env=env)
        errors = [line for line in out.stderr.splitlines() if line.startswith("chainsignal: error:")]
        assert out.returncode == 2 and len(errors) == 1, out.stderr[-2000:]
        assert error in errors[0] and "Traceback" not in out.stderr
    assert "[default: causal 16, encoder 8, from train.batch_size]" in " ".join(run("train", "--help").stdout.split())


def test_the_cli_turns_third_party_progress_bars_off():
    """Only our bars on the terminal: transformers' weight loading, datasets' saving, MLflow's transfers are off."""
    code = ("import os\nfrom flows.cli import _third_party_bars_off\n_third_party_bars_off()\n"
            "import transformers.utils.logging as tl\nimport datasets\nfrom mlflow.environment_variables import "
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as M\n"
            "print(tl.is_progress_bar_enabled(), datasets.is_progress_bar_enabled(), M.get())")
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False", "False"]
