"""PriceSource: daily OHLCV candles per asset, from a file export (live APIs plug in here)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Protocol

import polars as pl

from tasks.schemas import PRICES


class PriceSourceError(RuntimeError):
    """A price source cannot serve a request; one line, no secret."""


class PriceSource(Protocol):
    name: str

    def fetch_daily(self, asset: str, start: date, end: date) -> pl.DataFrame:
        """Daily candles of ``asset`` in USD for UTC days start..end, in the PRICES shape."""
        ...


class CsvPriceSource:
    """Candles from ``<dir>/<asset>_usd_daily.csv`` (columns date,open,high,low,close,volume[,source])."""

    name = "file"

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path(self, asset: str) -> Path:
        return self.directory / f"{asset.lower()}_usd_daily.csv"

    def fetch_daily(self, asset: str, start: date, end: date) -> pl.DataFrame:
        path = self.path(asset)
        if not path.is_file():
            raise PriceSourceError(f"prices.file_dir: no candles for {asset} (expected {path})")
        try:
            raw = pl.read_csv(path, try_parse_dates=False, infer_schema_length=0)
            frame = raw.select(
                pl.col("date").str.to_date("%Y-%m-%d"),
                pl.lit(asset.upper()).alias("asset"),
                *(pl.col(c).cast(pl.Float64).alias(f"{c}_usd") for c in ("open", "high", "low", "close")),
                pl.col("volume").cast(pl.Float64).alias("volume_base"),
                (pl.col("source") if "source" in raw.columns else pl.lit(f"file:{path.name}")).alias("source"),
            )
        except (pl.exceptions.PolarsError, KeyError) as exc:
            raise PriceSourceError(f"{path}: malformed candle file ({str(exc).splitlines()[0][:160]})") from None
        return frame.filter(pl.col("date").is_between(start, end)).sort("date").select(list(PRICES))
