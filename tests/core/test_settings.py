import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.core.settings import TRAIN_KIND_DEFAULTS, SettingsError, TrainSettings, load_settings, with_overrides


def test_defaults_are_the_embedded_default(data_dir):
    s = load_settings()
    assert s.storage.data_dir == data_dir
    assert s.tracking_uri == f"sqlite:///{data_dir.resolve() / 'mlflow.db'}"
    assert s.prices.file_dir.is_dir() and s.tweets.file_path.is_file()
    assert s.train.gradient_accumulation_steps == s.train.batch_size // s.train.micro_batch_size


def test_env_overrides_nested_fields(monkeypatch):
    monkeypatch.setenv("CHAINSIGNAL_TRAIN__LORA_R", "16")
    monkeypatch.setenv("CHAINSIGNAL_PRICES__ASSETS", '["eth", "aave"]')
    s = load_settings()
    assert s.train.lora_r == 16
    assert s.prices.assets == ("ETH", "AAVE")


def test_toml_file_is_read_and_env_wins(tmp_path, monkeypatch):
    (tmp_path / "chainsignal.toml").write_text('[train]\nlora_r = 4\nepochs = 2\n[dataset]\ntarget_asset = "AAVE"\n')
    monkeypatch.setenv("CHAINSIGNAL_TRAIN__EPOCHS", "7")
    s = load_settings()
    assert (s.train.lora_r, s.train.epochs, s.dataset.target_asset) == (4, 7.0, "AAVE")


@pytest.mark.parametrize(
    "env, setting",
    [
        ({"CHAINSIGNAL_TRAIN__LORA_R": "-1"}, "train.lora_r"),
        ({"CHAINSIGNAL_RPC__URL": "ftp://node"}, "rpc.url"),
        ({"CHAINSIGNAL_TRAIN__BATCH_SIZE": "10", "CHAINSIGNAL_TRAIN__MICRO_BATCH_SIZE": "4"}, "train"),
        ({"CHAINSIGNAL_DATASET__EMBARGO_DAYS": "zero"}, "dataset.embargo_days"),
        ({"CHAINSIGNAL_TRAIN__PACK_TOKENS": "4096"}, "train"),  # rows by tokens without packing
        ({"CHAINSIGNAL_TRAIN__PACKING": "true", "CHAINSIGNAL_TRAIN__PACK_TOKENS": "128"}, "train"),  # < cutoff_len
    ],
)
def test_bad_value_is_one_line_naming_the_setting(monkeypatch, env, setting):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as err:
        load_settings()
    msg = str(err.value)
    assert "\n" not in msg and f"bad setting {setting}" in msg


def test_malformed_toml_is_one_line(tmp_path):
    (tmp_path / "chainsignal.toml").write_text("[train\nlora_r = ")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "\n" not in str(err.value)


def test_secret_never_in_public_views(monkeypatch):
    monkeypatch.setenv("CHAINSIGNAL_RPC__API_KEY", "sk-very-secret-123")
    s = load_settings()
    assert s.rpc.api_key.get_secret_value() == "sk-very-secret-123"
    assert "sk-very-secret-123" not in repr(s)
    assert "sk-very-secret-123" not in str(s.public_dict())
    assert "sk-very-secret-123" not in str(s.flat_params())
    assert s.public_dict()["rpc"]["api_key_set"] is True


@pytest.mark.parametrize("url, template", [
    ("https://mainnet.infura.io/v3/{key}", "https://mainnet.infura.io/v3/{{api_key}}"),
    ("https://eth-mainnet.g.alchemy.com/v2/{key}", "https://eth-mainnet.g.alchemy.com/v2/{{api_key}}"),
    ("https://node.example/rpc?apikey={key}", "https://node.example/rpc?apikey={{api_key}}"),
    ("https://me:{key}@node.example/", "https://me:{{api_key}}@node.example/"),
])
def test_a_key_pasted_into_the_url_is_taken_out_at_once(monkeypatch, url, template):
    key = "9f2c4e1a7b3d5f60812a4c6e8b0d2f47"
    monkeypatch.setenv("CHAINSIGNAL_RPC__URL", url.format(key=key))
    s = load_settings()
    assert s.rpc.url == template.format() and s.rpc.api_key.get_secret_value() == key
    for view in (repr(s), str(s.public_dict()), str(s.flat_params())):
        assert key not in view


@pytest.mark.parametrize("url, key, template", [
    ("https://mainnet.infura.io/v3/SECRETKEYABC", "SECRETKEYABC", "https://mainnet.infura.io/v3/{api_key}"),
    ("https://mainnet.infura.io/v3/SECRETKEY123ABC", "SECRETKEY123ABC", "https://mainnet.infura.io/v3/{api_key}"),
    ("https://eth-mainnet.g.alchemy.com/v2/mainnet", "mainnet", "https://eth-mainnet.g.alchemy.com/v2/{api_key}"),
    ("https://red-fox.quiknode.pro/tok3n/", "tok3n", "https://red-fox.quiknode.pro/{api_key}/"),
    ("https://rpc.ankr.com/eth/ankrkey", "ankrkey", "https://rpc.ankr.com/eth/{api_key}"),
])
def test_a_short_or_letters_only_key_is_found_by_its_position(monkeypatch, url, key, template):
    """Where the documented shapes put a key, it is a key, whatever it looks like; only that segment is
    replaced (a short key such as 'mainnet' also spells part of the host)."""
    monkeypatch.setenv("CHAINSIGNAL_RPC__URL", url)
    s = load_settings()
    assert s.rpc.url == template and s.rpc.api_key.get_secret_value() == key
    for view in (repr(s), str(s.public_dict()), str(s.flat_params())):
        assert f"/{key}" not in view


def test_a_local_node_url_holds_no_key(monkeypatch):
    monkeypatch.setenv("CHAINSIGNAL_RPC__URL", "http://127.0.0.1:8545/")
    s = load_settings()
    assert s.rpc.url == "http://127.0.0.1:8545/" and s.rpc.api_key is None


@pytest.mark.parametrize("name, hint", [
    ("CHAINSIGNAL_RPC_URL", "did you mean CHAINSIGNAL_RPC__URL?"),
    ("CHAINSIGNAL_TRAIN__LORA_RANK", "did you mean CHAINSIGNAL_TRAIN__LORA_R"),
    ("CHAINSIGNAL_TYPO", "unknown setting variable CHAINSIGNAL_TYPO"),
])
def test_an_unknown_chainsignal_variable_is_refused_with_the_nearest_name(monkeypatch, name, hint):
    monkeypatch.setenv(name, "x")
    with pytest.raises(SettingsError, match=hint) as err:
        load_settings()
    assert "\n" not in str(err.value)


def test_known_variables_and_nested_keys_pass(monkeypatch):
    monkeypatch.setenv("CHAINSIGNAL_RPC__URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("CHAINSIGNAL_LIVE_TESTS", "0")
    monkeypatch.setenv("CHAINSIGNAL_PRICES__COINGECKO_IDS__ETH", "ethereum")
    assert load_settings().rpc.url == "http://127.0.0.1:9/"


def test_two_keys_in_the_url_or_a_key_twice_is_one_line(monkeypatch):
    monkeypatch.setenv("CHAINSIGNAL_RPC__URL", "https://me:pw0123456789@node.example/v2/AbCdEf0123456789AbCdEf01")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "\n" not in str(err.value) and "rpc.url" in str(err.value) and "pw0123456789" not in str(err.value)
    monkeypatch.setenv("CHAINSIGNAL_RPC__URL", "https://mainnet.infura.io/v3/9f2c4e1a7b3d5f60812a4c6e8b0d2f47")
    monkeypatch.setenv("CHAINSIGNAL_RPC__API_KEY", "another")
    with pytest.raises(SettingsError, match="rpc.api_key is set too") as err:
        load_settings()
    assert "9f2c4e1a7b3d5f60812a4c6e8b0d2f47" not in str(err.value)


def test_an_error_about_a_whole_section_does_not_print_its_key(monkeypatch):
    monkeypatch.setenv("CHAINSIGNAL_RPC__API_KEY", "sk-very-secret-123")
    monkeypatch.setenv("CHAINSIGNAL_RPC__CONCURRENCY_LIMIT", "shared")  # needs credits_per_second
    with pytest.raises(SettingsError, match="concurrency_limit needs credits_per_second") as err:
        load_settings()
    assert "sk-very-secret-123" not in str(err.value)


def test_an_infura_endpoint_gets_the_free_plan_unless_told_otherwise(monkeypatch):
    assert (load_settings().rpc.credits_per_second, load_settings().rpc.daily_credit_budget) == (None, None)
    monkeypatch.setenv("CHAINSIGNAL_RPC__URL", "https://mainnet.infura.io/v3/{api_key}")
    rpc = load_settings().rpc
    assert (rpc.credits_per_second, rpc.daily_credit_budget) == (500, 3_000_000)
    monkeypatch.setenv("CHAINSIGNAL_RPC__CREDITS_PER_SECOND", "4000")  # a paid plan's rate, the free day kept
    rpc = load_settings().rpc
    assert (rpc.credits_per_second, rpc.daily_credit_budget) == (4000, 3_000_000)
    monkeypatch.setenv("CHAINSIGNAL_RPC__PLAN", "unmetered")
    assert load_settings().rpc.daily_credit_budget is None


def test_a_run_pointed_at_another_endpoint_takes_that_endpoints_plan(monkeypatch):
    """A flow's rpc_url override: the Infura config's filled-in plan does not follow it to a local
    node, while what the user set by hand does."""
    monkeypatch.setenv("CHAINSIGNAL_RPC__URL", "https://mainnet.infura.io/v3/{api_key}")
    infura = load_settings()
    local = with_overrides(infura, rpc={"url": "http://127.0.0.1:8545"}).rpc
    assert (local.credits_per_second, local.daily_credit_budget) == (None, None)
    back = with_overrides(with_overrides(infura, rpc={"url": "http://127.0.0.1:8545"}),
                          rpc={"url": "https://mainnet.infura.io/v3/{api_key}"}).rpc
    assert (back.credits_per_second, back.daily_credit_budget) == (500, 3_000_000)
    monkeypatch.setenv("CHAINSIGNAL_RPC__DAILY_CREDIT_BUDGET", "1000000")  # set by hand: kept everywhere
    local = with_overrides(load_settings(), rpc={"url": "http://127.0.0.1:8545"}).rpc
    assert (local.credits_per_second, local.daily_credit_budget) == (None, 1_000_000)


def test_settings_hash_ignores_where_inputs_live(tmp_path):
    """The dataset version hashes settings and records: the same bundled samples in another checkout
    (another prices.file_dir) must give the same hash, while a setting that changes the data does not."""
    s = load_settings()
    moved = with_overrides(s, prices={"file_dir": tmp_path / "elsewhere" / "prices"})
    assert moved.prices.file_dir != s.prices.file_dir
    assert moved.hash("dataset", "prices", "sentiment") == s.hash("dataset", "prices", "sentiment")
    assert with_overrides(s, prices={"assets": ["ETH"]}).hash("prices") != s.hash("prices")


def test_overrides_validate_and_hash_changes():
    s = load_settings()
    t = with_overrides(s, train={"lora_r": 32, "epochs": None})
    assert t.train.lora_r == 32 and t.train.epochs == s.train.epochs
    assert t.hash("train") != s.hash("train") and t.hash("dataset") == s.hash("dataset")
    with pytest.raises(SettingsError, match="train.lora_r"):
        with_overrides(s, train={"lora_r": 0})


def test_settings_are_frozen():
    s = load_settings()
    with pytest.raises(ValidationError):
        s.train.lora_r = 3  # type: ignore[misc]
    assert isinstance(s.storage.data_dir, Path)


def test_readme_documents_every_setting():
    from tasks.core.settings import REPO_ROOT, Settings

    readme = (REPO_ROOT / "docs" / "settings.md").read_text()  # the reference the README points to
    for section, field in Settings.model_fields.items():
        for name in field.annotation.model_fields:
            assert f"`{section}.{name}`" in readme, f"{section}.{name} missing from the README settings table"


def test_a_training_field_left_unset_takes_its_kinds_default_and_follows_a_new_kind():
    """learning_rate, epochs, base_model, target_modules: the kind's values unless set; an override of model_kind
    takes the new kind's values (not the old kind's resolved ones); a value the user set is kept."""
    causal = load_settings()
    assert causal.train.learning_rate == TRAIN_KIND_DEFAULTS["causal"]["learning_rate"]
    encoder = with_overrides(causal, train={"model_kind": "encoder"})
    for name, value in TRAIN_KIND_DEFAULTS["encoder"].items():
        assert getattr(encoder.train, name) == value, name
    assert TRAIN_KIND_DEFAULTS["encoder"]["learning_rate"] != TRAIN_KIND_DEFAULTS["causal"]["learning_rate"]
    mine = with_overrides(causal, train={"model_kind": "encoder", "learning_rate": 7e-4})
    assert mine.train.learning_rate == 7e-4 and with_overrides(mine, train={"seed": 1}).train.learning_rate == 7e-4
    back = with_overrides(encoder, train={"model_kind": "causal"})
    assert back.train.base_model == "tiny-llama" and back.train.target_modules == ("q_proj", "v_proj")


@pytest.mark.parametrize("field, value", [("micro_batch_size", 4), ("train_on_inputs", True), ("packing", True),
                                          ("nproc", 2), ("fp8_base", True), ("distributed", True),
                                          ("checkpoint_every_steps", 50)])
def test_a_causal_only_setting_given_to_the_encoder_kind_is_refused(field, value):
    with pytest.raises(ValidationError, match=f"train.{field} applies to the causal kind only"):
        TrainSettings(model_kind="encoder", **{field: value})
    TrainSettings(model_kind="encoder", micro_batch_size=TrainSettings.model_fields["micro_batch_size"].default)  # the default is fine


def test_every_training_setting_is_read_by_the_encoder_kind_or_refused_for_it():
    """A setting the encoder's training neither reads nor refuses would be silently ignored (as `--learning-rate`
    once was for the encoder): every TrainSettings field is read as cfg.<name> on the encoder's path (its trainer,
    the selection, the walk-forward fold model, the train-lora flow), or it is in CAUSAL_ONLY and refused."""
    from tasks.core.settings import CAUSAL_ONLY, REPO_ROOT

    paths = ("tasks/training/encoder.py", "tasks/training/selection.py", "tasks/evaluation/foldmodel.py", "flows/train_lora.py")
    read = set(re.findall(r"\bcfg\.(\w+)", "".join((REPO_ROOT / p).read_text() for p in paths)))
    assert sorted(set(TrainSettings.model_fields) - CAUSAL_ONLY - read) == []


@pytest.mark.parametrize("field, value", [("encoder_pooling", "cls"), ("encoder_lora_layers", 2)])
def test_an_encoder_only_setting_given_to_the_causal_kind_is_refused(field, value):
    """The other way round: [CLS] pooling or top-layer LoRA over a cached encoder mean nothing to the causal kind;
    their default values are fine."""
    with pytest.raises(ValidationError, match=f"train.{field} applies to the encoder kind only, not to model_kind='causal'"):
        TrainSettings(model_kind="causal", **{field: value})
    TrainSettings(model_kind="causal", **{field: TrainSettings.model_fields[field].default})
    assert getattr(TrainSettings(model_kind="encoder", **{field: value}), field) == value


def test_batch_size_is_per_kind_and_a_given_one_wins():
    """The encoder's batch of 8 comes from its sweep (bench/results/train_defaults_encoder.md), the causal kind keeps 16;
    a batch size the user gives is kept for either kind."""
    assert TrainSettings(model_kind="causal").batch_size == TRAIN_KIND_DEFAULTS["causal"]["batch_size"] == 16
    assert TrainSettings(model_kind="encoder").batch_size == TRAIN_KIND_DEFAULTS["encoder"]["batch_size"] == 8
    assert TrainSettings(model_kind="encoder", batch_size=32).batch_size == 32
    assert TrainSettings(model_kind="causal", batch_size=32).batch_size == 32
