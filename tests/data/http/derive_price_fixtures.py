"""Derive the Binance and CoinGecko replay bodies from the REAL candles in data/sample/prices.

Run from the repo root: ``python tests/data/http/derive_price_fixtures.py``. The values are real
(Binance spot ETHUSDT/BTCUSDT daily candles, 2021-01-01..2021-01-10); the response *shapes* are
built from the APIs' documentation, so the files are synthetic bodies carrying real numbers.
BTC 2021-01-06 is left out on purpose: the gap that the tests expect to see reported.
"""

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).parent
DAYS = [f"2021-01-{d:02d}" for d in range(1, 11)]
MISSING = {("BTC", "2021-01-06")}


def candles(asset):
    with open(ROOT / "data" / "sample" / "prices" / f"{asset.lower()}_usd_daily.csv") as f:
        return [r for r in csv.DictReader(f) if r["date"] in DAYS and (asset, r["date"]) not in MISSING]


def ms(day, hour=0, minute=0):
    d = datetime.strptime(day, "%Y-%m-%d").replace(hour=hour, minute=minute, tzinfo=UTC)
    return int(d.timestamp() * 1000)


for asset in ("ETH", "BTC"):
    # Binance kline: [open time, open, high, low, close, volume, close time, quote volume,
    # trades, taker buy base, taker buy quote, ignore]; numbers as strings, times in ms.
    klines = []
    for r in candles(asset):
        t0 = ms(r["date"])
        quote = float(r["close"]) * float(r["volume"])
        klines.append([t0, r["open"], r["high"], r["low"], r["close"], r["volume"], t0 + 86_400_000 - 1,
                       f"{quote:.8f}", 0, "0", "0", "0"])
    (HERE / "binance" / f"klines_{asset}USDT_1d.json").write_text(json.dumps(klines, indent=1) + "\n")

    # CoinGecko market_chart/range: {"prices": [[ms, usd]], "market_caps": [...], "total_volumes": [...]}.
    # Four points a day (open, high, low, close) stand in for the hourly samples; the 24 h volume
    # at the day's last point is volume * close, so volume_base comes back as the real volume.
    prices, caps, vols = [], [], []
    for r in candles(asset):
        for (h, m), key in (((0, 5), "open"), ((6, 0), "high"), ((12, 0), "low"), ((23, 55), "close")):
            t = ms(r["date"], h, m)
            prices.append([t, float(r[key])])
            caps.append([t, 0.0])
            vols.append([t, float(r["volume"]) * float(r["close"])])
    coin = {"ETH": "ethereum", "BTC": "bitcoin"}[asset]
    body = {"prices": prices, "market_caps": caps, "total_volumes": vols}
    (HERE / "coingecko" / f"market_chart_range_{coin}.json").write_text(json.dumps(body, indent=1) + "\n")
