"""Crypto lexicon, and the per-author aggregation against a plain-Python reference on random data."""

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from tasks.social.sentiment import author_sentiment, compute_sentiment, daily_sentiment, score_texts


def test_crypto_lexicon_scores_slang_that_plain_vader_misses():
    text = "Bitcoin to the moon! #BTC bullish"
    assert score_texts([text], crypto_lexicon=False) == [0.0]
    assert score_texts([text])[0] > 0.5
    rekt, hodl = score_texts(["Got rekt by that dump, pure fud", "hodl, new ath soon"])
    assert rekt < -0.5 and hodl > 0.3


def _random_case(seed):
    rng = random.Random(seed)
    authors = [f"User{i}" for i in range(rng.randint(1, 8))]
    t0 = datetime(2021, 1, 1, tzinfo=UTC)
    rows = []
    for i in range(rng.randint(1, 60)):
        author = rng.choice(authors)
        rows.append({
            "post_id": str(i), "source": rng.choice(["x_api", "file"]),
            "created_at": t0 + timedelta(minutes=rng.randint(0, 3 * 24 * 60 - 1)),
            "author_username": rng.choice([author, author.lower(), author.upper()]),
            "compound": round(rng.uniform(-1, 1), 3) if rng.random() > 0.1 else rng.choice([0.05, -0.05, 0.0]),
            "author_followers": rng.choice([None, rng.randint(0, 10_000)]),
        })
    excluded = tuple(rng.sample(authors, k=rng.randint(0, len(authors) // 2)))
    return rows, excluded, rng.randint(1, 3), rng.choice([(0.05, -0.05), (0.3, -0.2)])


def _reference(rows, excluded, min_posts, pos, neg):
    """The study's aggregation, written the obvious way."""
    groups = defaultdict(list)
    for r in rows:
        a = r["author_username"].lower()
        if a in {e.lower() for e in excluded}:
            continue
        groups[(r["created_at"].date(), a)].append(r)
    out = {}
    for key, posts in groups.items():
        if len(posts) < min_posts:
            continue
        mean = sum(p["compound"] for p in posts) / len(posts)
        label = "POSITIVE" if mean >= pos else "NEGATIVE" if mean <= neg else "NEUTRAL"
        known = [p for p in sorted(posts, key=lambda p: (p["created_at"], p["post_id"])) if p["author_followers"] is not None]
        out[key] = (mean, len(posts), known[-1]["author_followers"] if known else None, label)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_author_aggregation_equals_reference(seed):
    rows, excluded, min_posts, (pos, neg) = _random_case(seed)
    frame = pl.DataFrame(rows, schema={"post_id": pl.String, "source": pl.String, "created_at": pl.Datetime("us", "UTC"),
                                       "author_username": pl.String, "compound": pl.Float64, "author_followers": pl.Int64})
    sentiment = frame.drop("author_followers").lazy()
    posts = frame.select("post_id", "source", "author_followers").lazy()
    got = author_sentiment(sentiment, posts, excluded_authors=excluded, min_posts=min_posts, positive_at=pos, negative_at=neg)
    assert isinstance(got, pl.LazyFrame)
    got_map = {(r["date"], r["author"]): (r["author_mean"], r["author_posts"], r["author_followers"], r["author_label"])
               for r in got.collect().to_dicts()}
    want = _reference(rows, excluded, min_posts, pos, neg)
    assert got_map.keys() == want.keys()
    for k, (mean, n, followers, label) in want.items():
        g = got_map[k]
        assert g[0] == pytest.approx(mean) and (g[1], g[2], g[3]) == (n, followers, label)

    daily = {r["date"]: r for r in daily_sentiment(sentiment, posts, excluded_authors=excluded, min_posts=min_posts,
                                                   positive_at=pos, negative_at=neg).collect().to_dicts()}
    kept = [r for r in rows if r["author_username"].lower() not in {e.lower() for e in excluded}]
    for day in {r["created_at"].date() for r in kept}:
        todays = [r for r in kept if r["created_at"].date() == day]
        weighted = [(r["compound"], r["author_followers"]) for r in todays if r["author_followers"] is not None]
        total = sum(w for _, w in weighted)
        d = daily[day]
        assert d["post_count"] == len(todays)
        assert d["sentiment_mean"] == pytest.approx(sum(r["compound"] for r in todays) / len(todays))
        if total:
            assert d["sentiment_follower_weighted_mean"] == pytest.approx(sum(c * w for c, w in weighted) / total)
        else:
            assert d["sentiment_follower_weighted_mean"] is None
        authors_today = [v for (dd, _), v in want.items() if dd == day]
        assert d["unique_authors"] == len(authors_today)


def test_compute_sentiment_uses_thresholds():
    posts = pl.DataFrame({"post_id": ["1", "2"], "source": ["x", "x"],
                          "created_at": [datetime(2021, 1, 1, tzinfo=UTC)] * 2,
                          "author_username": ["a", "b"], "text": ["bullish", "ethereum today"]},
                         schema_overrides={"created_at": pl.Datetime("us", "UTC")})
    out = compute_sentiment(posts, positive_at=0.9)
    assert out["label"].to_list() == ["NEUTRAL", "NEUTRAL"]
    assert compute_sentiment(posts)["label"].to_list() == ["POSITIVE", "NEUTRAL"]


def test_transformers_sentiment_model_by_local_path(tmp_path):
    """The optional classifier path, on a local model directory (the bundled MiniLM encoder with a
    fresh two-label head saved next to its tokenizer): batched scores are P(pos) - P(neg)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tasks.social.sentiment import score_texts_with_model
    from tasks.training.encoder import BUNDLED, resolve_encoder

    src = resolve_encoder(BUNDLED)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                                                               label2id={"NEGATIVE": 0, "POSITIVE": 1})
    model.save_pretrained(tmp_path / "clf")
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp_path / "clf")
    texts = ["ETH to the moon", "rekt again, dumping everything", "", "neutral update"] * 9  # more than one batch
    got = score_texts_with_model(texts, str(tmp_path / "clf"), batch_size=8)
    tok = AutoTokenizer.from_pretrained(tmp_path / "clf")
    with torch.no_grad():
        p = torch.softmax(model.eval()(**tok(texts[:4], padding=True, return_tensors="pt")).logits, -1)
    assert len(got) == len(texts) and all(-1 <= g <= 1 for g in got)
    assert got[:4] == pytest.approx((p[:, 1] - p[:, 0]).tolist(), abs=1e-5)
    out = compute_sentiment(pl.DataFrame({"post_id": ["1"], "source": ["x"],
                                          "created_at": [datetime(2021, 1, 1, tzinfo=UTC)],
                                          "author_username": ["a"], "text": ["ETH to the moon"]},
                                         schema_overrides={"created_at": pl.Datetime("us", "UTC")}),
                            model=str(tmp_path / "clf"))
    assert out["compound"][0] == pytest.approx(got[0], abs=1e-5)


def test_sentiment_model_errors_are_one_line(tmp_path):
    from tasks.social.sentiment import score_texts_with_model

    with pytest.raises(ValueError) as err:
        score_texts_with_model(["x"], str(tmp_path / "missing"))
    assert str(err.value).startswith("sentiment.model: cannot load") and "\n" not in str(err.value)
