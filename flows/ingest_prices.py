"""ingest-prices: daily OHLCV candles for the configured assets, into ``lake/prices``.

The source is ``prices.source``: ``file`` (CSV export, the demo), ``coingecko`` or ``binance``
(live, each paced and retried by its client). Bad candles stop the run before anything is written;
days missing an asset are reported as gaps and left open (``prices.accept_gaps`` commits them).

Run locally:  chainsignal ingest --only prices --start 2021-01-01 --end 2021-01-07
"""

from __future__ import annotations

from datetime import date

from prefect import flow

from flows.common import settings_for, workspace
from tasks.clients.prices import build_price_source
from tasks.market.prices import candle_origins, fetch_prices, write_price_days
from tasks.ops.orchestration import notify_failure
from tasks.ops.runs import publish_summary, resolve_days, started, summarize, utc_today


@flow(name="ingest-prices", log_prints=True, on_failure=[notify_failure])
def ingest_prices(start: date | None = None, end: date | None = None, overwrite: bool = False) -> dict:
    t0 = started()
    settings = settings_for()
    lake = workspace(settings).lake
    days = resolve_days(start, end)
    todo = [d for d in days if overwrite or not lake.is_complete("prices", d)]
    source = build_price_source(settings.prices)
    candles = fetch_prices(source, settings.prices.assets, todo[0], todo[-1]) if todo else None
    reports = write_price_days(candles, lake, days, settings.prices.assets, source.name, overwrite,
                               today=utc_today(), accept_gaps=settings.prices.accept_gaps,
                               origins=candle_origins(source, settings.prices.assets)) if todo else [
        {"day": d.isoformat(), "status": "skipped"} for d in days]
    gaps = [f"{r['day']}:{a}" for r in reports for a in r.get("gaps", [])]
    summary = summarize("ingest-prices", reports, t0, source=source.name, assets=",".join(settings.prices.assets),
                        gaps=len(gaps), first_gaps=",".join(gaps[:10]))
    publish_summary(summary, "ingest-prices summary", reports)
    return summary
