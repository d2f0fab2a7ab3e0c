"""SocialSource: posts for a query and a UTC day, from a file export or snscrape.

X/Twitter answers logged-out scraping with "blocked (404)" since mid-2023 (snscrape issue
#996): snscrape then raises ScraperException (or KeyError on a "logged out" page). That is mapped
to SourceBlockedError so the day is recorded as blocked, with the cause, instead of as empty.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Protocol

import polars as pl

from tasks.schemas import POSTS


class SourceError(RuntimeError):
    """A social source failed; one line, no secret."""


class SourceBlockedError(SourceError):
    """The platform refuses to serve this source (e.g. X blocks logged-out scraping)."""


class SocialSource(Protocol):
    name: str

    def fetch_posts(self, query: str, day: date, limit: int) -> pl.DataFrame: ...


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


class FilePostSource:
    """Posts from a CSV export with columns date, user, text (the bundled sample's shape)."""

    name = "file"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._frame: pl.DataFrame | None = None

    def _load(self) -> pl.DataFrame:
        if self._frame is None:
            if not self.path.is_file():
                raise SourceError(f"tweets.file_path: no such file {self.path}")
            try:
                raw = pl.read_csv(self.path, infer_schema_length=0)
                missing = {"date", "user", "text"} - set(raw.columns)
                if missing:
                    raise SourceError(f"{self.path}: missing columns {sorted(missing)}")
                ts = pl.col("date").str.to_datetime(time_zone="UTC", time_unit="us", strict=True)
                self._frame = raw.select(ts.alias("created_at"), pl.col("user"), pl.col("text"))
            except pl.exceptions.PolarsError as exc:
                raise SourceError(f"{self.path}: malformed post file ({str(exc).splitlines()[0][:160]})") from None
        return self._frame

    def fetch_posts(self, query: str, day: date, limit: int) -> pl.DataFrame:
        lo, hi = _day_bounds(day)
        rows = self._load().filter((pl.col("created_at") >= lo) & (pl.col("created_at") < hi)).head(limit)
        # The export has no post ids: derive a stable one from what identifies the post.
        ids = [
            hashlib.sha1(f"{t.isoformat()}|{u}|{x}".encode()).hexdigest()[:16]
            for t, u, x in rows.select("created_at", "user", "text").iter_rows()
        ]
        return rows.select(
            pl.Series("post_id", ids, dtype=pl.String),
            pl.lit(self.name).alias("source"),
            pl.col("created_at"),
            pl.col("user").alias("author_id"),
            pl.col("user").alias("author_username"),
            pl.lit(None, pl.Int64).alias("author_followers"),  # unknown in this export, not zero
            pl.col("text"),
            pl.lit(None, pl.Int64).alias("likes"),
            pl.lit(None, pl.Int64).alias("reposts"),
            pl.lit(None, pl.List(pl.String)).alias("hashtags"),
            pl.lit(None, pl.String).alias("lang"),
            pl.lit(query).alias("query"),
        ).select(list(POSTS)).cast(dict(POSTS))


class SnscrapePostSource:
    """Live X/Twitter search through snscrape (``#tag since:D until:D+1``)."""

    name = "snscrape"

    def fetch_posts(self, query: str, day: date, limit: int) -> pl.DataFrame:
        try:
            import snscrape.base
            import snscrape.modules.twitter as sntwitter
        except Exception as exc:  # snscrape breaks on some Python versions
            raise SourceError(f"snscrape cannot be imported: {type(exc).__name__}: {exc}") from None
        q = f"{query if query.startswith('#') else '#' + query} since:{day} until:{day + timedelta(days=1)}"
        rows = []
        try:
            for i, tweet in enumerate(sntwitter.TwitterSearchScraper(q).get_items()):
                if i >= limit:
                    break
                user = tweet.user
                rows.append({
                    "post_id": str(tweet.id), "source": self.name,
                    "created_at": tweet.date.astimezone(timezone.utc),
                    "author_id": str(user.id), "author_username": user.username,
                    "author_followers": user.followersCount, "text": tweet.rawContent,
                    "likes": tweet.likeCount, "reposts": tweet.retweetCount,
                    "hashtags": list(tweet.hashtags or []), "lang": tweet.lang, "query": query,
                })
        except snscrape.base.ScraperException as exc:
            raise SourceBlockedError(
                f"snscrape: X refused the search ({str(exc).splitlines()[0][:120]}); X blocks logged-out "
                "scraping since 2023 - configure tweets.sources with 'file' (an export) instead"
            ) from None
        except KeyError as exc:
            raise SourceBlockedError(f"snscrape: X answered with a logged-out page (missing {exc}); source blocked") from None
        return pl.DataFrame(rows, schema=POSTS)


def build_social_sources(names: tuple[str, ...], file_path: Path) -> list[SocialSource]:
    registry = {"file": lambda: FilePostSource(file_path), "snscrape": SnscrapePostSource}
    return [registry[n]() for n in names]
