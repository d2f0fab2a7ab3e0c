"""Price and social file sources on the bundled real samples, and their errors."""

from datetime import date

import polars as pl
import pytest

from flows.ingest_prices import ingest_prices
from flows.scrape_tweets import scrape_tweets
from tasks.clients.prices import CsvPriceSource, PriceSourceError
from tasks.clients.social import FilePostSource, SourceError
from tasks.core.schemas import POSTS, PRICES
from tasks.core.settings import SAMPLE_DIR
from tasks.core.storage import Lake


def test_price_file_source_reads_real_candles():
    df = CsvPriceSource(SAMPLE_DIR / "prices").fetch_daily("ETH", date(2021, 1, 1), date(2021, 1, 3))
    assert df.schema == PRICES and df.height == 3
    assert df["date"].to_list() == [date(2021, 1, i) for i in (1, 2, 3)]
    assert (df["high_usd"] >= df["low_usd"]).all()


def test_price_errors_are_one_line(tmp_path):
    with pytest.raises(PriceSourceError, match="no candles for DOGE"):
        CsvPriceSource(SAMPLE_DIR / "prices").fetch_daily("DOGE", date(2021, 1, 1), date(2021, 1, 2))
    (tmp_path / "eth_usd_daily.csv").write_text("date,open,high\n2021-01-01,1,oops\n")
    with pytest.raises(PriceSourceError) as err:
        CsvPriceSource(tmp_path).fetch_daily("ETH", date(2021, 1, 1), date(2021, 1, 2))
    assert "malformed" in str(err.value) and "\n" not in str(err.value)


def test_post_file_source_keeps_missing_fields_missing():
    posts = FilePostSource(SAMPLE_DIR / "tweets" / "ethereum_tweets.csv").fetch_posts("ethereum", date(2021, 1, 4), 100)
    assert posts.schema == POSTS and posts.height > 0
    assert posts["author_followers"].null_count() == posts.height and posts["likes"].null_count() == posts.height
    assert posts["post_id"].is_unique().all()


def test_malformed_post_file_is_one_line(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("when,who\n1,2\n")
    with pytest.raises(SourceError, match="missing columns"):
        FilePostSource(bad).fetch_posts("x", date(2021, 1, 1), 10)


def test_price_and_tweet_flows_are_idempotent(data_dir):
    days = (date(2021, 1, 1), date(2021, 1, 10))
    assert ingest_prices(*days)["partitions_done"] == 10
    assert ingest_prices(*days)["partitions_skipped"] == 10
    t1 = scrape_tweets(*days)
    assert t1["partitions_done"] == 10 and t1["rows_written"] > 0
    assert scrape_tweets(*days)["partitions_skipped"] == 10
    lake = Lake(data_dir / "lake")
    posts = lake.scan("posts").collect()
    assert posts.height == t1["rows_written"] and posts.select(pl.struct("source", "post_id").is_unique().all()).item()
    sentiment = lake.scan("sentiment").collect()
    assert sentiment.height == posts.height and sentiment["compound"].is_between(-1, 1).all()


def test_snscrape_block_becomes_a_recorded_blocked_day(monkeypatch, data_dir):
    """X refuses logged-out search: snscrape raises ScraperException. X itself cannot run here,
    so only its answer is stood in for; the source, the task and the lake are real."""
    import snscrape.base
    import snscrape.modules.twitter as sntwitter

    from tasks.clients.social import SnscrapePostSource, SourceBlockedError
    from tasks.social.tweets import scrape_posts_day

    def refuse(self):
        raise snscrape.base.ScraperException("4 requests to https://twitter.com/search failed, giving up: blocked (404)")
        yield  # pragma: no cover

    monkeypatch.setattr(sntwitter.TwitterSearchScraper, "get_items", refuse)
    with pytest.raises(SourceBlockedError) as err:
        SnscrapePostSource().fetch_posts("ethereum", date(2021, 1, 4), 10)
    assert "blocked" in str(err.value) and "\n" not in str(err.value)
    from tasks.clients.social import FilePostSource

    lake = Lake(data_dir / "lake")
    sources = [SnscrapePostSource(), FilePostSource(SAMPLE_DIR / "tweets" / "ethereum_tweets.csv")]
    report = scrape_posts_day.fn(sources, lake, date(2021, 1, 4), "ethereum", 100, today=date(2026, 1, 1))
    assert report["status"] == "done" and report["sources"]["snscrape"].startswith("blocked")
    assert lake.manifest("posts", date(2021, 1, 4))["sources"]["file"] == "ok"
