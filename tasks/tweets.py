"""Posts for a query, one partition per UTC day; blocked sources are recorded, not hidden."""

from __future__ import annotations

from datetime import date

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.clients.social import SocialSource, SourceBlockedError, SourceError
from tasks.logs import get_logger
from tasks.sentiment import compute_sentiment
from tasks.storage import Lake


@task(name="scrape-posts-day", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def scrape_posts_day(sources: list[SocialSource], lake: Lake, day: date, query: str, limit: int,
                     overwrite: bool = False) -> dict:
    """Fetch the day's posts from every source, write posts and their sentiment, commit the day.

    A blocked source is a result (recorded in the manifest, the day still completes); any other
    failure leaves the day open so the next run tries again.
    """
    log = get_logger()
    if not overwrite and lake.is_complete("posts", day) and lake.is_complete("sentiment", day):
        return {"day": day.isoformat(), "status": "skipped"}
    statuses: dict[str, str] = {}
    frames: dict[str, pl.DataFrame] = {}
    for source in sources:
        try:
            frames[source.name] = source.fetch_posts(query, day, limit).unique(["source", "post_id"], keep="first")
            statuses[source.name] = "ok"
        except SourceBlockedError as exc:
            statuses[source.name] = f"blocked: {exc}"
            log.warning("%s %s", day, exc)
        except SourceError as exc:
            statuses[source.name] = f"failed: {exc}"
            log.error("%s %s", day, exc)
    if any(s.startswith("failed") for s in statuses.values()):
        return {"day": day.isoformat(), "status": "failed", "sources": statuses}
    posts_part = lake.open_partition("posts", day, overwrite)
    sent_part = lake.open_partition("sentiment", day, overwrite)
    rows = 0
    for name, frame in frames.items():
        posts_part.write(frame, f"{name}__posts.parquet")
        sent_part.write(compute_sentiment(frame), f"{name}__sentiment.parquet")
        rows += frame.height
    manifest = {"rows": rows, "query": query, "sources": statuses}
    posts_part.commit(manifest)
    sent_part.commit({**manifest, "scorer": "vader"})
    blocked = any(s.startswith("blocked") for s in statuses.values())
    return {"day": day.isoformat(), "status": "blocked" if blocked and not frames else "done",
            "rows": rows, "sources": statuses}
