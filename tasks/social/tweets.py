"""Posts for a query, one partition per UTC day; blocked or failed sources are recorded, not hidden.

A day is committed only once it has ended (UTC) and, unless ``tweets.accept_empty_days``, only when
some source returned a post: a day left open is asked again by the next run. Posts longer than
``tweets.max_post_chars`` are cut (and counted) before scoring, so one huge post cannot stall a day.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.clients.social import SocialSource, SourceBlockedError, SourceError
from tasks.core.errors import AllSourcesFailedError
from tasks.core.logs import get_logger
from tasks.core.settings import SentimentSettings
from tasks.core.storage import Lake
from tasks.social.sentiment import compute_sentiment, daily_sentiment


def _alternatives(name: str, names: list[str]) -> str:
    """The other configured sources, or which ones could be added (never one already in use)."""
    others = [n for n in names if n != name]
    if others:
        return f" (configured alternatives: {', '.join(others)})"
    addable = [hint for source, hint in (("gdelt", "'gdelt' (keyless news)"), ("file", "'file' (an export)")) if source != name]
    return f" (no other source configured: add {' or '.join(addable)} to tweets.sources)"


def bound_post_length(posts: pl.DataFrame, max_chars: int) -> tuple[pl.DataFrame, int]:
    """Posts with their text cut to ``max_chars`` characters, and how many were cut."""
    too_long = posts["text"].str.len_chars() > max_chars
    cut = int(too_long.sum() or 0)
    if not cut:
        return posts, 0
    return posts.with_columns(pl.col("text").str.slice(0, max_chars)), cut


def fetch_day_from_sources(sources: list[SocialSource], query: str, day: date, limit: int, max_chars: int
                           ) -> tuple[dict[str, pl.DataFrame], dict[str, str], int]:
    """Every source's posts of the day (deduplicated, length-bounded), each source's status, posts cut."""
    log = get_logger()
    names = [s.name for s in sources]
    statuses: dict[str, str] = {}
    frames: dict[str, pl.DataFrame] = {}
    cut = 0
    for source in sources:
        try:
            posts = source.fetch_posts(query, day, limit).unique(["source", "post_id"], keep="first")
            frames[source.name], n_cut = bound_post_length(posts, max_chars)
            cut += n_cut
            statuses[source.name] = "ok"
        except SourceBlockedError as exc:
            statuses[source.name] = f"blocked: {exc}{_alternatives(source.name, names)}"
            log.warning("%s %s", day, statuses[source.name])
        except SourceError as exc:
            statuses[source.name] = f"failed: {exc}{_alternatives(source.name, names)}"
            log.error("%s %s", day, statuses[source.name])
    if cut:
        log.warning("%s: %d post(s) longer than %d characters were cut to that length (tweets.max_post_chars)",
                    day, cut, max_chars)
    return frames, statuses, cut


@task(name="scrape-posts-day", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def scrape_posts_day(sources: list[SocialSource], lake: Lake, day: date, query: str, limit: int,
                     overwrite: bool = False, sentiment: SentimentSettings | None = None, *, today: date,
                     max_post_chars: int = 25_000, accept_empty: bool = False) -> dict:
    """Fetch the day's posts from every source, write posts and their sentiment, commit the day.

    A source that is blocked or fails is recorded per source with its cause (and the configured
    alternatives); the day is committed with the sources that answered. When none answered the
    day is left open (a rerun tries again) and reported ``blocked`` / ``failed``: no posts from a
    failed source is not zero sentiment. A day that has not ended yet (``day >= today``) is left
    ``open``; one where the sources answered with no post is left ``empty`` unless ``accept_empty``.
    """
    sentiment = sentiment or SentimentSettings()
    if not overwrite and lake.is_complete("posts", day) and lake.is_complete("sentiment", day):
        return {"day": day.isoformat(), "status": "skipped"}
    if day >= today:
        return {"day": day.isoformat(), "status": "open", "reason": f"the UTC day has not ended (today is {today})"}
    frames, statuses, cut = fetch_day_from_sources(sources, query, day, limit, max_post_chars)
    if not frames:
        all_blocked = all(s.startswith("blocked") for s in statuses.values())
        return {"day": day.isoformat(), "status": "blocked" if all_blocked else "failed", "sources": statuses}
    rows = sum(f.height for f in frames.values())
    if rows == 0 and not accept_empty:
        return {"day": day.isoformat(), "status": "empty", "sources": statuses}
    manifest = {"rows": rows, "query": query, "sources": statuses, "posts_cut": cut}
    _write_day(lake, day, frames, manifest, sentiment, overwrite)
    degraded = sorted(n for n, s in statuses.items() if s != "ok")
    return {"day": day.isoformat(), "status": "done", "rows": rows, "sources": statuses, "degraded": degraded,
            "posts_cut": cut}


def _write_day(lake: Lake, day: date, frames: dict[str, pl.DataFrame], manifest: dict[str, Any],
               sentiment: SentimentSettings, overwrite: bool) -> None:
    """Posts and their scores per source, then both partitions committed (the sentiment one with the day's aggregates)."""
    posts_part = lake.open_partition("posts", day, overwrite)
    sent_part = lake.open_partition("sentiment", day, overwrite)
    scored = []
    for name, frame in frames.items():
        posts_part.write(frame, f"{name}__posts.parquet")
        s = compute_sentiment(frame, crypto_lexicon=sentiment.crypto_lexicon, positive_at=sentiment.positive_at,
                              negative_at=sentiment.negative_at, model=sentiment.model)
        sent_part.write(s, f"{name}__sentiment.parquet")
        scored.append(s)
    posts_part.commit(manifest)
    aggregates = daily_sentiment(
        pl.concat(scored).lazy(), pl.concat(list(frames.values())).lazy(),
        excluded_authors=tuple(sentiment.excluded_authors), min_posts=sentiment.min_posts_per_author,
        positive_at=sentiment.positive_at, negative_at=sentiment.negative_at,
    ).collect()
    daily = aggregates.drop("date").to_dicts()[0] if aggregates.height else {}
    sent_part.commit({**manifest, "scorer": "vader+crypto" if sentiment.crypto_lexicon else "vader", "daily": daily})


def raise_if_all_sources_failed(reports: list[dict]) -> None:
    """Fail the flow only when, on some day, every configured source failed or was blocked."""
    dead = [r for r in reports if r.get("status") in ("blocked", "failed")]
    if dead:
        first = dead[0]
        causes = "; ".join(f"{n}: {s}" for n, s in first["sources"].items())
        raise AllSourcesFailedError(
            f"every configured social source failed on {len(dead)} day(s), first {first['day']}: {causes}"[:600])
