"""ingest-chain: Ethereum blocks and transactions (and, with rpc.receipts, receipts) for UTC days.

Produces ``lake/transactions`` and ``lake/blocks`` (and ``lake/receipts``) partitions: one per
day, files per block chunk. Resumable and idempotent: complete days and existing chunks are
skipped; ``overwrite`` rebuilds. Credits are paced and counted per request; when the provider's
quota (HTTP 402) or ``rpc.daily_credit_budget`` is spent, the run stops cleanly, the summary says
at which day and block, and the next run resumes there. The lake holds one chain (chain id +
genesis hash, recorded on its first write): a node serving another one is refused in one line
before anything is written.

Run locally:  chainsignal ingest --only chain --start 2021-01-01 --end 2021-01-07
"""

from __future__ import annotations

from datetime import date

from prefect import flow

from flows.common import settings_for, workspace
from tasks.chain.blockrange import BlockClock
from tasks.chain.identity import check_lake_chain
from tasks.chain.job import ChainJobConfig, DayReport, ingest_chain_day_task, publish_day_table, stream_for_days
from tasks.clients.rpc import HttpJsonRpc
from tasks.core.errors import RpcQuotaError
from tasks.ops.orchestration import notify_failure
from tasks.ops.runs import publish_summary, resolve_days, started, summarize


@flow(name="ingest-chain", log_prints=True, on_failure=[notify_failure])
def ingest_chain(start: date | None = None, end: date | None = None, overwrite: bool = False,
                 rpc_url: str | None = None) -> dict:
    from tasks.clients.web3_provider import endpoint_chain_id  # web3 loads here (~0.9 s), not at import

    t0 = started()
    settings = settings_for(rpc={"url": rpc_url} if rpc_url else None)
    ws = workspace(settings)
    rpc = HttpJsonRpc.from_settings(settings.rpc, ws.credit_ledger(settings.rpc.chain))
    clock = BlockClock(rpc, ws.block_ranges_cache(settings.rpc.chain))
    reports: list[dict] = []
    stopped = None
    chain_id = None
    try:
        chain_id = endpoint_chain_id(rpc, settings.rpc.chain_id)
        # another chain than the lake holds is refused here, before anything is written
        check_lake_chain(ws.lake, clock.identity(chain_id), rpc.url)
        latest = clock.latest()
    except RpcQuotaError as err:  # quota or budget already spent: every day stays where it is
        stopped = {"day": None, "stopped_at_block": None, "error": str(err)}
    days = resolve_days(start, end)
    config = None if stopped else ChainJobConfig.from_settings(settings.rpc, chain_id)
    # One stream of block batches over every day: the node stays busy across day boundaries.
    shared = None if stopped else stream_for_days(rpc, ws.lake, clock, days, latest, config, overwrite)
    try:
        for day in days:
            if stopped:  # quota or budget spent: do not knock again today
                reports.append(DayReport(day.isoformat(), "stopped", error=f"not started: {stopped['error']}").as_dict())
                continue
            report = ingest_chain_day_task(rpc, ws.lake, clock, day, config, latest=latest, overwrite=overwrite,
                                           stream=shared).as_dict()
            reports.append(report)
            if report["status"] == "stopped":
                stopped = report
    finally:
        if shared is not None:
            shared.close()
    fetched_blocks = sum(r["blocks_fetched"] for r in reports)
    fetched_txs = sum(r["transactions_fetched"] for r in reports)
    seconds = max(1e-9, sum(r["seconds"] for r in reports))
    summary = summarize(
        "ingest-chain", reports, t0, endpoint=rpc.url, chain_id=chain_id,
        blocks_fetched=fetched_blocks, transactions_fetched=fetched_txs,
        blocks_per_s=round(fetched_blocks / seconds, 1), txs_per_s=round(fetched_txs / seconds, 1),
        requests=rpc.stats["requests"], credits=rpc.stats["credits"], retries=rpc.stats["retries"],
        batch_size_now=rpc.sizer.current, credits_spent_today_utc=rpc.ledger.spent_today(),
        stopped_at=(None if not stopped or not stopped["day"] else stopped["day"] if stopped["stopped_at_block"] is None
                    else f"{stopped['day']} block {stopped['stopped_at_block']}"),
        stopped_because=stopped["error"] if stopped else None,
        # days whose stored blocks the node no longer had (a deep reorg, another chain): ingested again
        chain_breaks=", ".join(f"{r['day']} at block {r['extra']['chain_break_at_block']}" for r in reports
                               if r.get("extra", {}).get("chain_break_at_block") is not None) or None,
    )
    publish_summary(summary, "ingest-chain summary", reports)
    publish_day_table(reports)
    return summary
