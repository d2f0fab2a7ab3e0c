"""Backfill: a date range of chain ingest fanned out per day on Dask (via prefect-dask).

Every Dask task in one process shares ONE rpc client (and so one token bucket): the default
LocalCluster runs a single process with threads, so the provider's rate limit holds as
configured. On a real multi-process cluster set ``rpc.concurrency_limit``: the Prefect global
concurrency limit then paces every worker process sharing the key.
"""

from __future__ import annotations

import threading
from datetime import date

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.chain.blockrange import BlockClock
from tasks.chain.job import ChainJobConfig, ingest_chain_day
from tasks.clients.rpc import HttpJsonRpc
from tasks.core.settings import resolve_settings
from tasks.core.storage import Workspace

_clients: dict[str, tuple] = {}
_lock = threading.Lock()


def shared_chain_clients(settings, ws):
    """One (rpc, clock, job config, latest) per process and endpoint."""
    from tasks.clients.web3_provider import endpoint_chain_id  # web3 loads here, not when flows import

    key = f"{settings.rpc.url}|{ws.lake.root}"
    with _lock:
        if key not in _clients:
            rpc = HttpJsonRpc.from_settings(settings.rpc, ws.credit_ledger(settings.rpc.chain))
            clock = BlockClock(rpc, ws.block_ranges_cache(settings.rpc.chain))
            config = ChainJobConfig.from_settings(settings.rpc, endpoint_chain_id(rpc, settings.rpc.chain_id))
            _clients[key] = (rpc, clock, config, clock.latest())
        return _clients[key]


@task(name="backfill-chain-day", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def backfill_chain_day(day: date, rpc_url: str | None = None, overwrite: bool = False) -> dict:
    """Runs on a Dask worker: settings and clients are resolved there, not pickled from the flow."""
    settings = resolve_settings(rpc={"url": rpc_url} if rpc_url else None)
    ws = Workspace.from_settings(settings)
    rpc, clock, config, latest = shared_chain_clients(settings, ws)
    return ingest_chain_day(rpc, ws.lake, clock, day, config, latest=latest, overwrite=overwrite).as_dict()


def dask_task_runner(services):
    from prefect_dask import DaskTaskRunner

    if services.dask_scheduler_address:
        return DaskTaskRunner(address=services.dask_scheduler_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": 1, "threads_per_worker": services.dask_local_workers,
                                          "processes": False, "dashboard_address": None})
