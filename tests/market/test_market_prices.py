"""Price days go into the lake only when they are right: bad candles (duplicate, NaN, negative, inf, out of
their range, not yet closed) stop the run with one line and nothing written; a day missing an asset
stays open until the data is there. Files are slices of the bundled real sample, then broken on purpose."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from flows.ingest_prices import ingest_prices
from tasks.core.errors import DataError
from tasks.core.settings import SAMPLE_DIR
from tasks.core.storage import Lake
from tasks.market.prices import check_candles

START, END = date(2021, 1, 1), date(2021, 1, 4)
BIN = Path(sys.executable).parent / "chainsignal"


def sample(asset: str) -> pl.DataFrame:
    """The real candles of START..END as the CSV export holds them."""
    frame = pl.read_csv(SAMPLE_DIR / "prices" / f"{asset.lower()}_usd_daily.csv", infer_schema_length=0)
    return frame.filter(pl.col("date").is_between(pl.lit(START.isoformat()), pl.lit(END.isoformat())))


def write(folder: Path, eth: pl.DataFrame, btc: pl.DataFrame | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    eth.write_csv(folder / "eth_usd_daily.csv")
    (btc if btc is not None else sample("BTC")).write_csv(folder / "btc_usd_daily.csv")
    return folder


def with_value(frame: pl.DataFrame, day: date, column: str, value: str) -> pl.DataFrame:
    return frame.with_columns(pl.when(pl.col("date") == day.isoformat()).then(pl.lit(value)).otherwise(pl.col(column)).alias(column))


def _bad_files() -> dict[str, tuple[pl.DataFrame, str]]:
    eth, day = sample("ETH"), date(2021, 1, 2)
    duplicate = pl.concat([eth, with_value(eth.filter(pl.col("date") == day.isoformat()), day, "close", "99999")])
    return {
        "duplicate day": (duplicate, "one row per asset and day"),
        "NaN close": (with_value(eth, day, "close", "NaN"), "finite and > 0"),
        "negative open": (with_value(eth, day, "open", "-5"), "finite and > 0"),
        "inf high": (with_value(eth, day, "high", "inf"), "finite and > 0"),
        "close above high": (with_value(eth, day, "close", "99999"), "low <= open, close <= high"),
        "negative volume": (with_value(eth, day, "volume", "-1"), "volume >= 0"),
    }


@pytest.mark.parametrize("case", list(_bad_files()))
def test_a_bad_candle_stops_the_run_and_nothing_is_written(case, tmp_path, monkeypatch, data_dir):
    frame, rule = _bad_files()[case]
    monkeypatch.setenv("CHAINSIGNAL_PRICES__FILE_DIR", str(write(tmp_path / "prices", frame)))
    with pytest.raises(DataError) as err:
        ingest_prices(START, END)
    message = str(err.value)
    assert rule in message and "ETH 2021-01-02" in message and "eth_usd_daily.csv" in message and "\n" not in message
    assert Lake(data_dir / "lake").completed_days("prices") == []


def test_a_candle_dated_today_or_later_is_refused():
    today = datetime.now(UTC).date()
    good = pl.DataFrame({"date": [today - timedelta(days=1)], "asset": ["ETH"], "open_usd": [1.0], "high_usd": [2.0],
                         "low_usd": [0.5], "close_usd": [1.5], "volume_base": [3.0], "source": ["file:x.csv"]})
    check_candles(good, today)  # yesterday's candle has closed
    for day in (today, date(2030, 1, 1)):
        with pytest.raises(DataError, match="the candle has closed"):
            check_candles(good.with_columns(pl.lit(day).alias("date")), today)


def test_a_day_missing_an_asset_stays_open_until_the_data_is_there(tmp_path, monkeypatch, data_dir):
    header_only = sample("ETH").head(0)
    folder = write(tmp_path / "prices", header_only)
    monkeypatch.setenv("CHAINSIGNAL_PRICES__FILE_DIR", str(folder))
    first = ingest_prices(START, END)
    lake = Lake(data_dir / "lake")
    assert first["partitions_incomplete"] == 4 and first["gaps"] == 4 and lake.completed_days("prices") == []
    write(folder, sample("ETH"))  # the export is fixed: the next run fills the days
    second = ingest_prices(START, END)
    assert second["partitions_done"] == 4 and second["gaps"] == 0
    assert lake.scan("prices").collect().group_by("date").len()["len"].to_list() == [2, 2, 2, 2]


def test_the_cli_says_it_in_one_line_with_exit_2(tmp_path):
    frame, _ = _bad_files()["duplicate day"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINSIGNAL_")}
    env.update(CHAINSIGNAL_STORAGE__DATA_DIR=str(tmp_path / "data"),
               CHAINSIGNAL_PRICES__FILE_DIR=str(write(tmp_path / "prices", frame)))
    out = subprocess.run([str(BIN), "ingest", "--only", "prices", "--start", "2021-01-01", "--end", "2021-01-04"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr  # the traceback stays in the flow run's logs, not the terminal
    (last,) = [line for line in out.stderr.splitlines() if line.startswith("chainsignal: error:")]
    assert last.startswith(f"chainsignal: error: {tmp_path / 'prices' / 'eth_usd_daily.csv'}: ETH 2021-01-02 breaks the rule "
                           "'one row per asset and day'")
    assert not (tmp_path / "data" / "lake" / "prices").exists() or not list((tmp_path / "data" / "lake" / "prices").rglob("*.parquet"))
