"""daily-ingest: the three ingests (chain, prices, tweets) for one UTC day (or a range).

Defaults to yesterday (UTC), the last whole day. Each ingest is a subflow, so one that fails
does not hide the others' results; the flow fails at the end if any did.

Run locally:  chainsignal ingest --start 2021-01-01 --end 2021-01-07
"""

from __future__ import annotations

from datetime import date

from prefect import flow

from flows.ingest_chain import ingest_chain
from flows.ingest_prices import ingest_prices
from flows.scrape_tweets import scrape_tweets
from tasks.core.errors import IngestError
from tasks.ops.orchestration import notify_failure
from tasks.ops.runs import publish_summary, resolve_days, started


@flow(name="daily-ingest", log_prints=True, on_failure=[notify_failure])
def daily_ingest(start: date | None = None, end: date | None = None, overwrite: bool = False,
                 rpc_url: str | None = None) -> dict:
    t0 = started()
    days = resolve_days(start, end)
    first, last = days[0], days[-1]
    results = {
        "chain": ingest_chain(first, last, overwrite, rpc_url, return_state=True),
        "prices": ingest_prices(first, last, overwrite, return_state=True),
        "tweets": scrape_tweets(first, last, overwrite, return_state=True),
    }
    summary: dict = {"flow": "daily-ingest", "start": first.isoformat(), "end": last.isoformat()}
    failed = []
    for name, state in results.items():
        if state.is_completed():
            summary[name] = state.result()
        else:
            failed.append(name)
            summary[name] = {"status": "failed", "message": state.message}
    summary["seconds"] = round(started() - t0, 2)
    publish_summary({k: v for k, v in summary.items() if not isinstance(v, dict)} | {"failed": ",".join(failed) or "none"},
                    "daily-ingest summary")
    if failed:  # one line for the terminal; each subflow's run keeps its traceback
        causes = "; ".join(f"{name}: {summary[name]['message']}" for name in failed)
        raise IngestError(f"daily-ingest: {', '.join(failed)} failed ({causes}); the other ingests' days are kept")
    return summary
