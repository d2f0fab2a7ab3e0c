"""scrape-tweets: posts for the configured query from each social source, into ``lake/posts``
(and their VADER + crypto-lexicon sentiment into ``lake/sentiment``). A blocked or failed source
is recorded per day with its cause; the flow fails only if every configured source failed on a day.

Run locally:  chainsignal ingest --only tweets --start 2021-01-01 --end 2021-01-07
"""

from __future__ import annotations

from datetime import date

from prefect import flow

from flows.common import settings_for, workspace
from tasks.clients.social import build_social_sources
from tasks.ops.orchestration import emit, notify_failure
from tasks.ops.runs import publish_summary, resolve_days, started, summarize, utc_today
from tasks.social.tweets import raise_if_all_sources_failed, scrape_posts_day


@flow(name="scrape-tweets", log_prints=True, on_failure=[notify_failure])
def scrape_tweets(start: date | None = None, end: date | None = None, overwrite: bool = False) -> dict:
    t0 = started()
    settings = settings_for()
    lake = workspace(settings).lake
    sources = build_social_sources(settings.tweets)
    reports = [
        scrape_posts_day(sources, lake, day, settings.tweets.query, settings.tweets.max_posts_per_day, overwrite,
                         settings.sentiment, today=utc_today(), max_post_chars=settings.tweets.max_post_chars,
                         accept_empty=settings.tweets.accept_empty_days)
        for day in resolve_days(start, end)
    ]
    summary = summarize("scrape-tweets", reports, t0, sources=",".join(settings.tweets.sources), query=settings.tweets.query,
                        posts_cut=sum(r.get("posts_cut", 0) for r in reports))
    publish_summary(summary, "scrape-tweets summary", reports)
    for r in reports:
        for source, status in (r.get("sources") or {}).items():
            if str(status).startswith("blocked"):
                emit("source.blocked", f"source.{source}", day=r["day"], status=status)
    raise_if_all_sources_failed(reports)
    return summary
