"""The ``chainsignal`` command: run each flow locally (an ephemeral Prefect API starts on demand).

Flows are imported inside each command so ``chainsignal --help`` stays fast and training
libraries load only for the commands that train.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import date, datetime
from importlib import metadata
from typing import Annotated, Any

import typer

from tasks.core.settings import TRAIN_KIND_DEFAULTS, TrainSettings

app = typer.Typer(
    name="chainsignal",
    help="Daily on-chain, market and social data -> a LoRA fine-tuned language-model signal.\n\n"
    "Settings come from chainsignal.toml and CHAINSIGNAL_* environment variables "
    "(see `chainsignal settings`). Start with `chainsignal demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: real placeholders (DATE, INTEGER), no <bool>/<%Y-%m-%d>
)

STACK = ("prefect", "mlflow", "polars", "pandas", "web3", "transformers", "peft", "torch", "datasets", "snscrape")
Day = Annotated[datetime | None, typer.Option(formats=["%Y-%m-%d"], metavar="DATE", help="UTC day, YYYY-MM-DD.")]


def _knob(name: str, help: str = "") -> Any:
    """A training option whose help names its default, read from the settings model (train.<name>)."""
    def shown(value: Any) -> str:
        return ",".join(value) if isinstance(value, tuple) else str(value)

    default = TrainSettings.model_fields[name].default
    if default is None and name in TRAIN_KIND_DEFAULTS["causal"]:  # a per-kind default
        default = TRAIN_KIND_DEFAULTS["causal"][name]
        text = ", ".join(f"{kind} {shown(values[name])}" for kind, values in TRAIN_KIND_DEFAULTS.items())
    else:
        text = shown(default)
    metavar = {int: "INTEGER", float: "FLOAT"}.get(type(default), "TEXT")
    return typer.Option(help=f"{help} [default: {text}, from train.{name}]".lstrip(), show_default=False, metavar=metavar)


# training options that train and walk-forward share
ModelKind = Annotated[str | None, _knob("model_kind", "causal (LM + LoRA) or encoder (MiniLM + LoRA + head).")]
EncoderLoraLayers = Annotated[int | None, _knob("encoder_lora_layers", "Encoder kind: LoRA on the top N layers, the layers "
                                                "below run once per text (faster on CPU); 0 = all.")]
Precision = Annotated[str | None, _knob("precision", "auto (causal bf16 where supported, encoder fp32), bf16 (the encoder: "
                                        "bfloat16 autocast, faster on a CPU with AVX512-BF16) or fp32.")]

EXIT_RESUMABLE = 3  # stopped early or a day left open: rerun later, it resumes (0 done, 2 user error, 1 bug)
EXIT_LAKE_PROBLEMS = 4  # `status --verify` found a problem in the lake
_OPEN_STATUSES = {"not_final": "not final on the node yet", "incomplete": "missing an asset",
                  "missing": "no data yet", "open": "not over yet (UTC)", "empty": "no post yet"}


def unfinished(summary: dict) -> str | None:
    """Why an ingest's summary (or daily-ingest's, holding one per source) is not complete, in one line."""
    parts = [f"{k}: {unfinished(v)}" for k, v in summary.items() if isinstance(v, dict) and unfinished(v)]
    if summary.get("stopped_because"):
        where = f" at {summary['stopped_at']}" if summary.get("stopped_at") else ""
        parts.append(f"stopped{where} ({summary['stopped_because']}); a spent quota or budget comes back at 00:00 UTC")
    parts += [f"{summary[f'partitions_{status}']} day(s) {why}" for status, why in _OPEN_STATUSES.items()
              if summary.get(f"partitions_{status}")]
    return "; ".join(parts) or None


def _day(value: datetime | None) -> date | None:
    return value.date() if value else None


def _version(value: bool) -> None:
    if value:
        versions = []
        for pkg in STACK:
            try:
                versions.append(f"{pkg} {metadata.version(pkg)}")
            except metadata.PackageNotFoundError:
                versions.append(f"{pkg} (missing)")
        typer.echo(f"chainsignal {metadata.version('chainsignal')} (python {sys.version.split()[0]})")
        typer.echo("  " + ", ".join(versions))
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print versions and exit.")] = False,
) -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.logging.configuration import setup_logging

    from tasks.core.logs import user_errors_in_one_line_on_the_console

    setup_logging()  # now, not at the first flow run, so that the console handler it makes is the one wrapped
    user_errors_in_one_line_on_the_console()


def _third_party_bars_off() -> None:
    """One progress bar per long step, ours (ingest days, training steps, scoring): the bars of MLflow's
    artifact transfers, transformers' weight loading and datasets' saving are switched off (a user's own
    setting of these variables wins)."""
    for name, value in (("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                        ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(name, value)


def _use_the_server_up_started() -> None:
    """With `chainsignal up` running and no PREFECT_API_URL set, flows run against its server: they show in
    the Prefect UI it printed, and no temporary server is started (~7 s a command). Runs before Prefect is
    imported: its settings are read once, at import."""
    from tasks.core.errors import ChainsignalError
    from tasks.core.settings import load_settings
    from tasks.ops.services import running_prefect_api

    if os.environ.get("PREFECT_API_URL"):
        return
    try:
        api = running_prefect_api(load_settings())
    except ChainsignalError:
        return  # a bad setting is reported by the command itself, in one line
    if api:
        os.environ["PREFECT_API_URL"] = api


def _temporary_servers_owned() -> None:
    """Stop the temporary Prefect servers that killed commands left behind, and mark the one this
    command may start as its own (tasks/ops/services.py says how)."""
    from tasks.ops.services import mark_temporary_servers, reap_temporary_servers

    reap_temporary_servers()
    mark_temporary_servers()


def _print(obj: dict) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.command()
def ingest(
    start: Day = None,
    end: Day = None,
    only: Annotated[str, typer.Option(metavar="TEXT", help="all | chain | prices | tweets")] = "all",
    overwrite: Annotated[bool, typer.Option(help="Rebuild complete days (atomically) instead of skipping them.")] = False,
    rpc_url: Annotated[str | None, typer.Option(metavar="TEXT", help="Override rpc.url for this run.")] = None,
) -> None:
    """Ingest chain, prices and tweets for UTC days START..END (default: yesterday).

    Exit codes: 0 every day complete; 2 bad input or setting (one line); 3 stopped early or some day
    left open (quota or credit budget spent, a day not final yet, a source with no data yet): rerun later
    and it resumes where it stopped; 1 a bug (with its traceback)."""
    if only == "all":
        from flows.daily_ingest import daily_ingest

        summary = daily_ingest(_day(start), _day(end), overwrite, rpc_url)
    elif only == "chain":
        from flows.ingest_chain import ingest_chain

        summary = ingest_chain(_day(start), _day(end), overwrite, rpc_url)
    elif only == "prices":
        from flows.ingest_prices import ingest_prices

        summary = ingest_prices(_day(start), _day(end), overwrite)
    elif only == "tweets":
        from flows.scrape_tweets import scrape_tweets

        summary = scrape_tweets(_day(start), _day(end), overwrite)
    else:
        raise typer.BadParameter("--only must be one of all, chain, prices, tweets")
    _print(summary)
    if reason := unfinished(summary):
        typer.echo(f"chainsignal: stopped early, resumable: {reason}", err=True)
        raise typer.Exit(EXIT_RESUMABLE)


@app.command("build-dataset")
def build_dataset_cmd(
    start: Day = None,
    end: Day = None,
    target_asset: Annotated[str | None, typer.Option(metavar="TEXT", help="Asset whose next-day move is the label (default ETH).")] = None,
    task: Annotated[str | None, typer.Option(
        metavar="TEXT", help="direction | return | sentiment | tx-value (default: dataset.name).")] = None,
) -> None:
    """Build features, labels, splits and Alpaca records from the lake (a new dataset version)."""
    from flows.build_dataset import build_dataset

    manifest = build_dataset(_day(start), _day(end), target_asset, task)
    _print({k: v for k, v in manifest.items() if k not in ("settings", "numeric_features")})


@app.command()
def train(
    dataset: Annotated[str | None, typer.Option(metavar="TEXT", help="Dataset fingerprint (default: the latest build).")] = None,
    base_model: Annotated[str | None, _knob("base_model", "Hub id or local path (tiny-llama: built offline; minilm: bundled).")] = None,
    epochs: Annotated[float | None, _knob("epochs", "Most passes over the training split (the best validation epoch is kept).")] = None,
    lora_r: Annotated[int | None, _knob("lora_r", "LoRA rank; per kind.")] = None,
    lora_alpha: Annotated[int | None, _knob("lora_alpha", "LoRA scaling (alpha / r multiplies the update).")] = None,
    lora_dropout: Annotated[float | None, _knob("lora_dropout", "Dropout on the LoRA input.")] = None,
    target_module: Annotated[list[str] | None, typer.Option(
        help="A module LoRA adapts (repeat for several) [default: causal q_proj,v_proj, encoder query,value, "
             "from train.target_modules]", metavar="TEXT",
        show_default=False)] = None,
    train_on_inputs: Annotated[bool | None, typer.Option(
        "--train-on-inputs/--loss-on-response", help="Loss on the prompt too, or only on the response (default).",
        show_default=False)] = None,
    learning_rate: Annotated[float | None, _knob("learning_rate", "AdamW peak learning rate.")] = None,
    batch_size: Annotated[int | None, _knob("batch_size", "Examples per optimizer step.")] = None,
    micro_batch_size: Annotated[int | None, _knob("micro_batch_size", "Examples per forward pass (causal kind).")] = None,
    cutoff_len: Annotated[int | None, _knob("cutoff_len", "Tokens per example; longer prompts are cut.")] = None,
    seed: Annotated[int | None, _knob("seed", "Seed of every random choice.")] = None,
    model_kind: ModelKind = None,
    encoder_lora_layers: EncoderLoraLayers = None,
    precision: Precision = None,
    evaluate: Annotated[bool, typer.Option(help="Run the evaluate flow on the new run.")] = True,
) -> None:
    """Train LoRA adapters (train-lora flow), log them to MLflow, then evaluate."""
    from flows.train_lora import train_lora

    _print(train_lora(dataset=dataset, base_model=base_model, lora_r=lora_r, lora_alpha=lora_alpha,
                      lora_dropout=lora_dropout, batch_size=batch_size, micro_batch_size=micro_batch_size,
                      epochs=epochs, learning_rate=learning_rate, cutoff_len=cutoff_len, seed=seed,
                      model_kind=model_kind, run_evaluation=evaluate, target_modules=target_module,
                      train_on_inputs=train_on_inputs, encoder_lora_layers=encoder_lora_layers, precision=precision))


@app.command("evaluate")
def evaluate_cmd(run_id: Annotated[str | None, typer.Option(
        metavar="TEXT", help="MLflow run id (default: the latest LoRA run).")] = None) -> None:
    """Score a run's adapter against the baselines and log the verdict."""
    from flows.evaluate import evaluate

    _print(evaluate(run_id))


@app.command("walk-forward")
def walk_forward_cmd(
    dataset: Annotated[str | None, typer.Option(metavar="TEXT", help="Dataset fingerprint (default: the latest build).")] = None,
    step_days: Annotated[int, typer.Option(metavar="INTEGER", help="Retrain every N labelled days; each fold scores the next N.")] = 10,
    validation_days: Annotated[int, typer.Option(metavar="INTEGER", help="Labelled days before each fold's test days: validation.")] = 10,
    first_test_day: Day = None,
    epochs: Annotated[float | None, _knob("epochs", "Passes over each fold's training days.")] = None,
    lora: Annotated[bool, typer.Option(help="Train LoRA per fold; --no-lora scores the baselines only (fast).")] = True,
    model_kind: ModelKind = None,
    encoder_lora_layers: EncoderLoraLayers = None,
    precision: Precision = None,
    concurrency: Annotated[int, typer.Option(
        metavar="INTEGER", help="Folds at once (threads; the Dask cluster at services.dask_scheduler_address when set).")] = 1,
) -> None:
    """Walk-forward evaluation: retrain every N days on an expanding window, score the next N, pooled verdict.
    FIRST_TEST_DAY defaults to the dataset's validation start."""
    from flows.walk_forward import walk_forward

    _print(walk_forward(dataset=dataset, step_days=step_days, validation_days=validation_days,
                        first_test_day=_day(first_test_day), epochs=epochs, lora=lora, model_kind=model_kind,
                        encoder_lora_layers=encoder_lora_layers, precision=precision, concurrency=concurrency))


@app.command()
def daily(start: Day = None, end: Day = None, rpc_url: Annotated[str | None, typer.Option(metavar="TEXT")] = None) -> None:
    """The scheduled DAG once: daily-ingest, build-dataset, then predict."""
    from flows.daily import daily as daily_flow

    _print(daily_flow(_day(start), _day(end), False, rpc_url))


@app.command()
def demo() -> None:
    """Run the whole DAG offline on the embedded default (local anvil node, bundled samples, tiny model)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from flows.demo import run_demo

    run_demo()


@app.command("predict")
def predict_cmd(dataset: Annotated[str | None, typer.Option(
        metavar="TEXT", help="Dataset fingerprint (default: the latest build).")] = None) -> None:
    """Score the newest day with the champion adapter and record the signal."""
    from flows.predict import predict

    _print(predict(dataset))


@app.command()
def backfill(start: Day, end: Day, rpc_url: Annotated[str | None, typer.Option(metavar="TEXT")] = None) -> None:
    """Ingest a date range fanned out per day on a Dask cluster (local by default)."""
    from flows.backfill import backfill as backfill_flow

    _print(backfill_flow(_day(start), _day(end), rpc_url=rpc_url))


@app.command()
def status(verify: Annotated[bool, typer.Option(
        "--verify", help="Also read back every committed file and the stored block chain; exit 4 on any problem.")] = False,
        node: Annotated[bool, typer.Option(
            "--node", help="With --verify: also ask the node (rpc.url) whether it still serves the stored chain.")] = False,
        rpc_url: Annotated[str | None, typer.Option(metavar="TEXT", help="Override rpc.url for --node.")] = None,
) -> None:
    """Lake coverage per dataset and day, gaps, recorded failures, and the signals' track record.

    With --verify, every manifest is read, every file it lists opened and its rows counted, and the
    stored blocks checked as one chain (unique, contiguous, parent hashes); each problem is one line
    naming the dataset, the day, the file and the command that repairs it. With --node as well, the
    node is asked for the newest stored block (a few more when it disagrees, to name the first day it
    does): a lake filled from another history (a deep reorg, a restarted dev chain) is found. Exit
    codes: 0 no problem, 4 problems found, 2 a bad setting or an unreachable node."""
    import polars as pl

    from flows.common import settings_for, workspace
    from tasks.clients.rpc import HttpJsonRpc
    from tasks.core.errors import NotFoundError
    from tasks.evaluation.predict import track_record
    from tasks.ops.status import lake_coverage, verify_lake

    if node and not verify:
        raise typer.BadParameter("--node checks the stored chain against the node: give it with --verify", param_hint="--node")
    s = settings_for(rpc={"url": rpc_url} if rpc_url else None)
    ws = workspace(s)
    typer.echo(f"lake: {ws.lake.root}")
    for row in lake_coverage(ws.lake):
        if not row["days"]:
            typer.echo(f"  {row['dataset']:<13} no complete day")
            continue
        typer.echo(f"  {row['dataset']:<13} {row['days']:>5} days  {row['first']} .. {row['last']}  "
                   f"missing {row['missing_days']}  problems {row['days_with_problems']}")
        for p in row["problems"]:
            typer.echo(f"      {p}")
    if ws.lake.completed_days("signals"):
        try:
            features = pl.scan_parquet(ws.dataset_version(s.dataset.name).features_path)
        except (FileNotFoundError, NotFoundError):  # no dataset built yet, or its file gone
            features = pl.LazyFrame(schema={"date": pl.Date, "label": pl.String, "next_day_return": pl.Float64})
        record = track_record(ws.lake.scan("signals"), features)
        typer.echo("signals (latest 10):")
        for r in record.tail(10).iter_rows(named=True):
            acc = "" if r["rolling_accuracy"] is None else f"  rolling accuracy {r['rolling_accuracy']:.2f}"
            typer.echo(f"  {r['date']} -> {r['target_date']}: {r['label']:<8} realized {r['realized'] or 'pending'}{acc}")
    if verify:
        rpc = HttpJsonRpc.from_settings(s.rpc, ws.credit_ledger(s.rpc.chain)) if node else None
        checked = verify_lake(ws.lake, rpc)
        problems = checked.problems
        typer.echo(f"verify: {len(problems)} problem(s)" + ("" if problems else ": every committed file opens and adds up"))
        for problem in problems:
            typer.echo(f"  {problem.line()}")
        for note in checked.notes:
            typer.echo(f"  note: {note}")
        if problems:
            raise typer.Exit(EXIT_LAKE_PROBLEMS)


@app.command()
def setup() -> None:
    """Create work pools, rate limits, the notification block and all deployments (PREFECT_API_URL)."""
    from tasks.core.settings import load_settings
    from tasks.ops.orchestration import setup as run_setup

    _print(run_setup(load_settings()))


@app.command()
def up() -> None:
    """Start a Prefect server, an MLflow server and one worker per pool as local processes."""
    from tasks.core.settings import load_settings
    from tasks.ops.services import start_all

    _print(start_all(load_settings()))


@app.command()
def down() -> None:
    """Stop what `chainsignal up` started."""
    from tasks.core.settings import load_settings
    from tasks.ops.services import stop_all

    _print(stop_all(load_settings()))


@app.command()
def settings() -> None:
    """Print the resolved settings (secrets hidden)."""
    from tasks.core.settings import load_settings

    _print(load_settings().public_dict())


def main() -> None:
    """Entry point: a user-fixable error (any ChainsignalError) is one line and exit 2; a bug keeps its traceback."""
    from tasks.core.errors import ChainsignalError

    _third_party_bars_off()
    _temporary_servers_owned()
    _use_the_server_up_started()
    try:
        app()
    except (ChainsignalError, FileNotFoundError) as exc:
        typer.echo(f"chainsignal: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
