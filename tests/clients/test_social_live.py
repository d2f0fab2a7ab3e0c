"""X API v2 and GDELT sources against a local replay server, and the scrape-tweets flow's rules
for blocked / failed sources. Bodies are synthetic (tests/data/http/README.md)."""

from datetime import UTC, date, datetime

import pytest

from flows.scrape_tweets import scrape_tweets
from tasks.clients.pacing import PacedJsonGet
from tasks.clients.social import GdeltPostSource, SourceError, XApiPostSource, build_social_sources
from tasks.core.schemas import POSTS
from tasks.core.settings import load_settings
from tasks.core.storage import Lake
from tests.http_replay import HttpReplay, gdelt_route, x_api_route

DAY = date(2021, 1, 4)
FAST = dict(requests_per_second=1000, timeout_s=0.5, max_retries=2, backoff_initial_s=0.01, backoff_max_s=0.05)
TOKEN = "AAAA-very-secret-bearer"


def x_source(server, token=TOKEN):
    return XApiPostSource(PacedJsonGet("x_api", server.url + "/2", headers={"Authorization": f"Bearer {token}"},
                                       secrets=(token,), **FAST))


def test_x_api_paginates_and_joins_author_followers():
    with HttpReplay({"/2/tweets/search/recent": x_api_route(TOKEN)}) as server:
        server.faults.append("429")
        src = x_source(server)
        posts = src.fetch_posts("ethereum", DAY, 100)
    assert posts.schema == POSTS and posts.height == 3 and src.http.stats["retries"] == 1
    by_id = {r["post_id"]: r for r in posts.to_dicts()}
    first = by_id["1346100000000000001"]
    assert (first["author_username"], first["author_followers"], first["likes"], first["reposts"]) == ("synthetic_bull", 9000, 12, 3)
    assert first["hashtags"] == ["ETH"] and first["created_at"] == datetime(2021, 1, 4, 9, 15, tzinfo=UTC)
    asked = [r["query"] for r in server.requests if r["query"]]
    assert asked[-1]["next_token"] == "b26v89c19zqg8o3fpzbkk" and asked[0]["expansions"] == "author_id"
    assert asked[0]["start_time"] == "2021-01-04T00:00:00Z" and asked[0]["end_time"] == "2021-01-05T00:00:00Z"


def test_x_api_limit_stops_paging():
    with HttpReplay({"/2/tweets/search/recent": x_api_route(TOKEN)}) as server:
        posts = x_source(server).fetch_posts("ethereum", DAY, 2)
    assert posts.height == 2 and len(server.requests) == 1


def test_x_api_bad_or_missing_token_is_one_line_without_the_token():
    with HttpReplay({"/2/tweets/search/recent": x_api_route(TOKEN)}) as server:
        with pytest.raises(SourceError) as err:
            x_source(server, token="wrong-token-xyz").fetch_posts("ethereum", DAY, 10)
    msg = str(err.value)
    assert "HTTP 401" in msg and "tweets.x_bearer_token" in msg and "wrong-token-xyz" not in msg and "\n" not in msg
    with pytest.raises(SourceError, match="x_bearer_token is not set"):
        XApiPostSource(None).fetch_posts("ethereum", DAY, 10)


def test_gdelt_articles_become_posts_and_its_text_errors_are_one_line():
    with HttpReplay({"/api/v2/doc/doc": gdelt_route}) as server:
        server.faults.extend(["503", "malformed"])
        src = GdeltPostSource(PacedJsonGet("gdelt", server.url + "/api/v2/doc/doc", **FAST))
        posts = src.fetch_posts("#ethereum", DAY, 100)
        assert posts.schema == POSTS and posts.height == 3 and src.http.stats["retries"] == 2
        assert set(posts["author_username"]) == {"news.example.org", "markets.example.com"}
        q = server.requests[-1]["query"]
        assert (q["mode"], q["format"], q["query"], q["startdatetime"], q["enddatetime"]) == (
            "ArtList", "json", "ethereum", "20210104000000", "20210104235959")
        with pytest.raises(SourceError) as err:
            src.fetch_posts("et", DAY, 10)
    assert "too short" in str(err.value) and "\n" not in str(err.value)


def _env(monkeypatch, server, sources, token=TOKEN):
    monkeypatch.setenv("CHAINSIGNAL_TWEETS__SOURCES", sources)
    monkeypatch.setenv("CHAINSIGNAL_TWEETS__X_API_URL", server.url + "/2")
    monkeypatch.setenv("CHAINSIGNAL_TWEETS__X_BEARER_TOKEN", token)
    monkeypatch.setenv("CHAINSIGNAL_TWEETS__GDELT_URL", server.url + "/api/v2/doc/doc")
    for k in ("X_REQUESTS_PER_SECOND", "GDELT_REQUESTS_PER_SECOND"):
        monkeypatch.setenv(f"CHAINSIGNAL_TWEETS__{k}", "1000")
    monkeypatch.setenv("CHAINSIGNAL_TWEETS__BACKOFF_INITIAL_S", "0.01")
    monkeypatch.setenv("CHAINSIGNAL_TWEETS__MAX_RETRIES", "1")


def test_flow_commits_what_answered_and_records_the_failed_source(monkeypatch, data_dir):
    with HttpReplay({"/2/tweets/search/recent": x_api_route(TOKEN), "/api/v2/doc/doc": gdelt_route}) as server:
        _env(monkeypatch, server, '["x_api", "gdelt"]', token="revoked-token-123")
        summary = scrape_tweets(DAY, DAY)
    assert summary["partitions_done"] == 1 and summary["rows_written"] == 3
    lake = Lake(data_dir / "lake")
    manifest = lake.manifest("posts", DAY)
    assert manifest["sources"]["gdelt"] == "ok"
    assert manifest["sources"]["x_api"].startswith("failed: x_api: HTTP 401")
    assert "configured alternatives: gdelt" in manifest["sources"]["x_api"]
    assert "revoked-token-123" not in (data_dir / "lake").joinpath("posts", f"date={DAY}", "_manifest.json").read_text()
    daily = lake.manifest("sentiment", DAY)["daily"]
    assert daily["post_count"] == 3 and daily["unique_authors"] == 2


def test_flow_fails_only_when_every_source_failed(monkeypatch, data_dir):
    with HttpReplay({"/2/tweets/search/recent": x_api_route(TOKEN), "/api/v2/doc/doc": gdelt_route}) as server:
        _env(monkeypatch, server, '["x_api", "gdelt"]')
        monkeypatch.setenv("CHAINSIGNAL_TWEETS__QUERY", "et")  # GDELT refuses it; x_api then fails too
        server.faults.extend(["500", "500"])
        with pytest.raises(SourceError) as err:
            scrape_tweets(DAY, DAY)
    msg = str(err.value)
    assert "every configured social source failed on 1 day(s), first 2021-01-04" in msg and "\n" not in msg
    assert "gdelt:" in msg and "x_api:" in msg
    assert not Lake(data_dir / "lake").is_complete("posts", DAY)  # left open: a rerun tries again


def test_x_api_and_gdelt_data_flow_with_followers(monkeypatch, data_dir):
    with HttpReplay({"/2/tweets/search/recent": x_api_route(TOKEN), "/api/v2/doc/doc": gdelt_route}) as server:
        _env(monkeypatch, server, '["x_api"]')
        monkeypatch.setenv("CHAINSIGNAL_SENTIMENT__EXCLUDED_AUTHORS", '["Synthetic_Bear"]')
        summary = scrape_tweets(DAY, DAY)
    assert summary["rows_written"] == 3
    daily = Lake(data_dir / "lake").manifest("sentiment", DAY)["daily"]
    # synthetic_bear is excluded: only synthetic_bull's two posts count, weighted by 9,000 followers each
    assert daily["post_count"] == 2 and daily["unique_authors"] == 1
    assert daily["sentiment_follower_weighted_mean"] == pytest.approx(daily["sentiment_mean"])


def test_default_sources_are_snscrape_then_gdelt_and_unknown_is_one_line(monkeypatch):
    monkeypatch.delenv("CHAINSIGNAL_TWEETS__SOURCES")
    s = load_settings()
    assert s.tweets.sources == ("snscrape", "gdelt")
    assert [src.name for src in build_social_sources(s.tweets)] == ["snscrape", "gdelt"]
    monkeypatch.setenv("CHAINSIGNAL_TWEETS__SOURCES", '["reddit"]')
    with pytest.raises(Exception, match="bad setting tweets.sources"):
        load_settings()
