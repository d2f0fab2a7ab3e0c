"""SocialSource: posts for a query and a UTC day, from a file export, snscrape, X API v2 or GDELT.

X/Twitter answers logged-out scraping with "blocked (404)" since mid-2023 (snscrape issue
#996): snscrape then raises ScraperException (or KeyError on a "logged out" page). That is mapped
to SourceBlockedError so the day is recorded as blocked, with the cause, instead of as empty.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from tasks.clients.pacing import HttpGiveUp, PacedJsonGet
from tasks.core.errors import SourceBlockedError, SourceError
from tasks.core.schemas import POSTS


class SocialSource(Protocol):
    name: str

    def fetch_posts(self, query: str, day: date, limit: int) -> pl.DataFrame: ...


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=UTC)
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
                    "created_at": tweet.date.astimezone(UTC),
                    "author_id": str(user.id), "author_username": user.username,
                    "author_followers": user.followersCount, "text": tweet.rawContent,
                    "likes": tweet.likeCount, "reposts": tweet.retweetCount,
                    "hashtags": list(tweet.hashtags or []), "lang": tweet.lang, "query": query,
                })
        except snscrape.base.ScraperException as exc:
            raise SourceBlockedError(
                f"snscrape: X refused the search ({str(exc).splitlines()[0][:120]}); X blocks logged-out "
                "scraping since 2023 - configure tweets.sources with 'x_api' (a bearer token), 'gdelt' (keyless news) "
                "or 'file' (an export) instead"
            ) from None
        except KeyError as exc:
            raise SourceBlockedError(f"snscrape: X answered with a logged-out page (missing {exc}); source blocked - "
                                     "configure tweets.sources with 'x_api', 'gdelt' or 'file' instead") from None
        return pl.DataFrame(rows, schema=POSTS)


class XApiPostSource:
    """X API v2 recent search (``GET /tweets/search/recent``) with an app bearer token.

    Pages through ``meta.next_token`` up to ``limit`` posts; author usernames and follower counts
    come from ``expansions=author_id`` + ``user.fields=public_metrics``. Recent search covers the
    last 7 days only: older days come back empty from X, which is recorded as such.
    """

    name = "x_api"

    def __init__(self, http: PacedJsonGet | None, page_size: int = 100):
        self.http = http  # None when no bearer token is configured
        self.page_size = page_size

    def fetch_posts(self, query: str, day: date, limit: int) -> pl.DataFrame:
        if self.http is None:
            raise SourceError("x_api: tweets.x_bearer_token is not set (env CHAINSIGNAL_TWEETS__X_BEARER_TOKEN)")
        lo, hi = _day_bounds(day)
        params = {
            "query": f"{query if query.startswith('#') else '#' + query} -is:retweet",
            "start_time": lo.strftime("%Y-%m-%dT%H:%M:%SZ"), "end_time": hi.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "max_results": self.page_size, "expansions": "author_id",
            "tweet.fields": "created_at,public_metrics,lang,entities,author_id",
            "user.fields": "public_metrics,username",
        }
        rows: list[dict] = []
        token = None
        while len(rows) < limit:
            ans = self._get({**params, **({"next_token": token} if token else {})})
            body = ans.body
            try:
                users = {u["id"]: u for u in body.get("includes", {}).get("users", [])}
                for tw in body.get("data", []):
                    user = users.get(tw["author_id"], {})
                    metrics = tw.get("public_metrics", {})
                    rows.append({
                        "post_id": str(tw["id"]), "source": self.name,
                        "created_at": datetime.fromisoformat(tw["created_at"].replace("Z", "+00:00")),
                        "author_id": str(tw["author_id"]), "author_username": user.get("username"),
                        "author_followers": user.get("public_metrics", {}).get("followers_count"),
                        "text": tw["text"], "likes": metrics.get("like_count"), "reposts": metrics.get("retweet_count"),
                        "hashtags": [h["tag"] for h in tw.get("entities", {}).get("hashtags", [])],
                        "lang": tw.get("lang"), "query": query,
                    })
                token = body.get("meta", {}).get("next_token")
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise SourceError(f"x_api: malformed search body ({type(exc).__name__}: {exc})") from None
            if not token:
                break
        return pl.DataFrame(rows[:limit], schema=POSTS)

    def _get(self, params: dict):
        try:
            ans = self.http.get("/tweets/search/recent", params)
        except HttpGiveUp as exc:
            raise SourceError(str(exc)) from None
        if ans.status == 401:
            raise SourceError("x_api: HTTP 401, bearer token rejected - check tweets.x_bearer_token")
        if ans.status == 403:
            detail = ans.body.get("detail") or ans.body.get("title") if isinstance(ans.body, dict) else ""
            raise SourceBlockedError(f"x_api: HTTP 403, this app's access level may not search ({self.http.scrub(str(detail))[:120]})")
        if ans.status >= 400:
            raise SourceError(f"x_api: HTTP {ans.status}: {self.http.scrub(str(ans.body))[:160]}")
        if not isinstance(ans.body, dict):
            raise SourceError("x_api: malformed search body (not a JSON object)")
        return ans


class GdeltPostSource:
    """GDELT DOC 2.0 news search (``mode=ArtList&format=json``): keyless, last 3 months only.

    One article = one post: the headline is the text (scored by our sentiment like any post: the
    ArtList mode carries no tone), the domain is the author, the URL's hash is the id. GDELT
    answers a query it dislikes with a 200 and a plain-text message: that is a one-line error.
    """

    name = "gdelt"

    def __init__(self, http: PacedJsonGet, max_records: int = 250):
        self.http = http
        self.max_records = max_records

    def fetch_posts(self, query: str, day: date, limit: int) -> pl.DataFrame:
        lo, hi = _day_bounds(day)
        params = {"query": query.lstrip("#"), "mode": "ArtList", "format": "json", "sort": "DateAsc",
                  "maxrecords": min(limit, self.max_records),
                  "startdatetime": lo.strftime("%Y%m%d%H%M%S"), "enddatetime": (hi - timedelta(seconds=1)).strftime("%Y%m%d%H%M%S")}
        try:
            ans = self.http.get("", params)
        except HttpGiveUp as exc:
            raise SourceError(str(exc)) from None
        if ans.status >= 400 or not isinstance(ans.body, dict):
            raise SourceError(f"gdelt: HTTP {ans.status}: {str(ans.body).strip()[:160]}")
        rows = []
        try:
            for art in ans.body.get("articles", []):
                seen = datetime.strptime(art["seendate"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
                if not lo <= seen < hi:
                    continue
                rows.append({
                    "post_id": hashlib.sha1(art["url"].encode()).hexdigest()[:16], "source": self.name,
                    "created_at": seen, "author_id": art.get("domain"), "author_username": art.get("domain"),
                    "author_followers": None, "text": art.get("title") or "", "likes": None, "reposts": None,
                    "hashtags": None, "lang": art.get("language"), "query": query,
                })
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise SourceError(f"gdelt: malformed ArtList body ({type(exc).__name__}: {exc})") from None
        return pl.DataFrame(rows[:limit], schema=POSTS)


SOURCE_NAMES = ("file", "snscrape", "x_api", "gdelt")


def build_social_sources(tweets: Any) -> list[SocialSource]:
    """The sources named in ``tweets.sources`` (settings section), in order, each with its own pacing."""
    common = dict(timeout_s=tweets.timeout_s, max_retries=tweets.max_retries,
                  backoff_initial_s=tweets.backoff_initial_s, backoff_max_s=tweets.backoff_max_s,
                  concurrency_limit=tweets.concurrency_limit)

    def x_api() -> XApiPostSource:
        token = tweets.x_bearer_token.get_secret_value() if tweets.x_bearer_token else None
        http = PacedJsonGet("x_api", tweets.x_api_url, requests_per_second=tweets.x_requests_per_second,
                            headers={"Authorization": f"Bearer {token}"}, secrets=(token,), **common) if token else None
        return XApiPostSource(http, tweets.x_page_size)

    registry = {
        "file": lambda: FilePostSource(tweets.file_path),
        "snscrape": SnscrapePostSource,
        "x_api": x_api,
        "gdelt": lambda: GdeltPostSource(PacedJsonGet("gdelt", tweets.gdelt_url, requests_per_second=tweets.gdelt_requests_per_second,
                                                      **common), tweets.gdelt_max_records),
    }
    unknown = [n for n in tweets.sources if n not in registry]
    if unknown:
        raise SourceError(f"tweets.sources: unknown {unknown} (known: {', '.join(SOURCE_NAMES)})")
    return [registry[n]() for n in tweets.sources]
