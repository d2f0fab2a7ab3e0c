"""Posts for a query, one partition per UTC day; blocked or failed sources are recorded, not hidden."""

from __future__ import annotations

from datetime import date
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.clients.social import SocialSource, SourceBlockedError, SourceError
from tasks.core.errors import AllSourcesFailedError
from tasks.core.logs import get_logger
from tasks.core.storage import Lake
from tasks.social.sentiment import NEGATIVE_AT, POSITIVE_AT, compute_sentiment, daily_sentiment


def _alternatives(name: str, names: list[str]) -> str:
    others = [n for n in names if n != name]
    if others:
        return f" (configured alternatives: {', '.join(others)})"
    return " (no other source configured: add 'gdelt' (keyless news) or 'file' (an export) to tweets.sources)"


@task(name="scrape-posts-day", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def scrape_posts_day(sources: list[SocialSource], lake: Lake, day: date, query: str, limit: int,
                     overwrite: bool = False, sentiment: Any = None) -> dict:
    """Fetch the day's posts from every source, write posts and their sentiment, commit the day.

    A source that is blocked or fails is recorded per source with its cause (and the configured
    alternatives); the day is committed with the sources that answered. When none answered the
    day is left open (a rerun tries again) and reported ``blocked`` / ``failed``: no posts from a
    failed source is not zero sentiment. ``sentiment`` is the settings section (None: defaults).
    """
    log = get_logger()
    if not overwrite and lake.is_complete("posts", day) and lake.is_complete("sentiment", day):
        return {"day": day.isoformat(), "status": "skipped"}
    knobs = {
        "crypto_lexicon": getattr(sentiment, "crypto_lexicon", True),
        "positive_at": getattr(sentiment, "positive_at", POSITIVE_AT),
        "negative_at": getattr(sentiment, "negative_at", NEGATIVE_AT),
        "model": getattr(sentiment, "model", None),
    }
    names = [s.name for s in sources]
    statuses: dict[str, str] = {}
    frames: dict[str, pl.DataFrame] = {}
    for source in sources:
        try:
            frames[source.name] = source.fetch_posts(query, day, limit).unique(["source", "post_id"], keep="first")
            statuses[source.name] = "ok"
        except SourceBlockedError as exc:
            statuses[source.name] = f"blocked: {exc}{_alternatives(source.name, names)}"
            log.warning("%s %s", day, statuses[source.name])
        except SourceError as exc:
            statuses[source.name] = f"failed: {exc}{_alternatives(source.name, names)}"
            log.error("%s %s", day, statuses[source.name])
    if not frames:
        all_blocked = all(s.startswith("blocked") for s in statuses.values())
        return {"day": day.isoformat(), "status": "blocked" if all_blocked else "failed", "sources": statuses}
    posts_part = lake.open_partition("posts", day, overwrite)
    sent_part = lake.open_partition("sentiment", day, overwrite)
    rows = 0
    scored = []
    for name, frame in frames.items():
        posts_part.write(frame, f"{name}__posts.parquet")
        s = compute_sentiment(frame, **knobs)
        sent_part.write(s, f"{name}__sentiment.parquet")
        scored.append(s)
        rows += frame.height
    manifest = {"rows": rows, "query": query, "sources": statuses}
    posts_part.commit(manifest)
    aggregates = daily_sentiment(
        pl.concat(scored).lazy(), pl.concat(list(frames.values())).lazy(),
        excluded_authors=tuple(getattr(sentiment, "excluded_authors", ())),
        min_posts=getattr(sentiment, "min_posts_per_author", 1),
        positive_at=knobs["positive_at"], negative_at=knobs["negative_at"],
    ).collect()
    daily = aggregates.drop("date").to_dicts()[0] if aggregates.height else {}
    sent_part.commit({**manifest, "scorer": "vader+crypto" if knobs["crypto_lexicon"] else "vader", "daily": daily})
    degraded = sorted(n for n, s in statuses.items() if s != "ok")
    return {"day": day.isoformat(), "status": "done", "rows": rows, "sources": statuses, "degraded": degraded}


def raise_if_all_sources_failed(reports: list[dict]) -> None:
    """Fail the flow only when, on some day, every configured source failed or was blocked."""
    dead = [r for r in reports if r.get("status") in ("blocked", "failed")]
    if dead:
        first = dead[0]
        causes = "; ".join(f"{n}: {s}" for n, s in first["sources"].items())
        raise AllSourcesFailedError(
            f"every configured social source failed on {len(dead)} day(s), first {first['day']}: {causes}"[:600])
