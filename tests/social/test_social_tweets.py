"""A social day is committed only when it is over and holds posts (or the user accepts an empty one), and
one huge post cannot stall it: long posts are cut to tweets.max_post_chars and the cut is reported.
Real flows on the file source; posts are the bundled real sample's, the huge one is SYNTHETIC."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from flows.scrape_tweets import scrape_tweets
from tasks.core.settings import SAMPLE_DIR
from tasks.core.storage import Lake
from tasks.social.tweets import bound_post_length

BIN = Path(sys.executable).parent / "chainsignal"
DAY = date(2021, 1, 4)  # a day of the bundled sample with posts


def sample_day(day: date) -> pl.DataFrame:
    frame = pl.read_csv(SAMPLE_DIR / "tweets" / "ethereum_tweets.csv", infer_schema_length=0)
    return frame.filter(pl.col("date").str.starts_with(day.isoformat()))


def test_bound_post_length_cuts_and_counts():
    posts = pl.DataFrame({"text": ["short", "x" * 30, "y" * 10]})
    bounded, cut = bound_post_length(posts, 10)
    assert cut == 1 and bounded["text"].to_list() == ["short", "x" * 10, "y" * 10]


def test_a_day_that_has_not_ended_is_never_committed(tmp_path, monkeypatch, data_dir):
    today = datetime.now(UTC).date()
    rows = sample_day(DAY).with_columns(pl.lit(f"{today.isoformat()}T00:10:00Z").alias("date"))
    rows.write_csv(tmp_path / "posts.csv")
    monkeypatch.setenv("CHAINSIGNAL_TWEETS__FILE_PATH", str(tmp_path / "posts.csv"))
    summary = scrape_tweets(today, today + timedelta(days=1))
    assert summary["partitions_open"] == 2 and summary.get("partitions_done", 0) == 0
    assert Lake(data_dir / "lake").completed_days("posts") == []


def test_an_empty_day_stays_open_until_accepted(tmp_path, monkeypatch, data_dir):
    sample_day(DAY).write_csv(tmp_path / "posts.csv")
    monkeypatch.setenv("CHAINSIGNAL_TWEETS__FILE_PATH", str(tmp_path / "posts.csv"))
    monkeypatch.setenv("CHAINSIGNAL_TWEETS__ACCEPT_EMPTY_DAYS", "false")
    first = scrape_tweets(DAY, DAY + timedelta(days=1))
    lake = Lake(data_dir / "lake")
    assert first["partitions_done"] == 1 and first["partitions_empty"] == 1
    assert lake.completed_days("posts") == [DAY]  # the empty next day is asked again by the next run
    monkeypatch.setenv("CHAINSIGNAL_TWEETS__ACCEPT_EMPTY_DAYS", "true")
    second = scrape_tweets(DAY, DAY + timedelta(days=1))
    assert second["partitions_skipped"] == 1 and second["partitions_done"] == 1
    assert lake.manifest("posts", DAY + timedelta(days=1))["rows"] == 0


PEAK_OF = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
           "print(f'peak_rss_kb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr); sys.exit(code)")


@pytest.mark.timeout(300)
def test_a_50_mb_post_is_cut_and_reported_in_bounded_memory(tmp_path):
    """Before the bound, this file ran past 5 minutes at 1.5 GB (VADER on one 50 MB text)."""
    huge = sample_day(DAY).head(1).with_columns(pl.lit("ethereum to the moon " * 2_500_000).alias("text"))  # SYNTHETIC, ~52 MB
    pl.concat([sample_day(DAY), huge]).write_csv(tmp_path / "posts.csv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINSIGNAL_")}
    env.update(CHAINSIGNAL_STORAGE__DATA_DIR=str(tmp_path / "data"), CHAINSIGNAL_TWEETS__SOURCES='["file"]',
               CHAINSIGNAL_TWEETS__FILE_PATH=str(tmp_path / "posts.csv"))
    # the peak of the ingest and what it waited for, measured by a fresh parent: this worker's own RUSAGE_CHILDREN also
    # holds any earlier test's child that subprocess reaps late (a 1.4 GB one once failed this test)
    out = subprocess.run([sys.executable, "-c", PEAK_OF, str(BIN), "ingest", "--only", "tweets", "--start", DAY.isoformat(),
                          "--end", DAY.isoformat()], capture_output=True, text=True, timeout=280, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert '"posts_cut": 1' in out.stdout and "cut to that length" in out.stderr
    peak_mb = int(out.stderr.strip().splitlines()[-1].removeprefix("peak_rss_kb=")) / 1024
    assert peak_mb < 1024, f"peak RSS {peak_mb:.0f} MB"
    stored = Lake(tmp_path / "data" / "lake").scan("posts").collect()
    assert stored["text"].str.len_chars().max() == 25_000 and stored.height == sample_day(DAY).height + 1


def test_a_failing_file_source_is_not_told_to_add_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CHAINSIGNAL_TWEETS__FILE_PATH", str(tmp_path / "missing.csv"))
    with pytest.raises(Exception) as err:
        scrape_tweets(DAY, DAY)
    message = str(err.value)
    assert "tweets.file_path: no such file" in message and "'gdelt' (keyless news)" in message
    assert "'file' (an export)" not in message
