import json
from datetime import date, timedelta

import polars as pl
import pytest
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from tasks.evaluation.baselines import baseline_predictions
from tasks.evaluation.metrics import collapse_warning, score
from tasks.evaluation.plots import plot_confusion

Y_TRUE = ["POSITIVE", "NEUTRAL", "NEGATIVE", "POSITIVE", "NEGATIVE", "NEUTRAL", "POSITIVE"]
Y_PRED = ["POSITIVE", "NEGATIVE", "NEGATIVE", "NEUTRAL", "NEGATIVE", "NEUTRAL", "POSITIVE"]


def test_metrics_match_scikit_learn():
    s = score(Y_TRUE, Y_PRED)
    assert s.accuracy == pytest.approx(accuracy_score(Y_TRUE, Y_PRED))
    assert s.macro_f1 == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))
    assert s.mcc == pytest.approx(matthews_corrcoef(Y_TRUE, Y_PRED))


def test_collapse_warning_fires_on_a_constant_predictor_only():
    assert "collapsed" in collapse_warning("m", score(Y_TRUE, ["NEUTRAL"] * len(Y_TRUE)))
    assert collapse_warning("m", score(Y_TRUE, Y_PRED)) is None


def test_baselines_use_only_what_is_known():
    days = [date(2021, 1, 1) + timedelta(days=i) for i in range(9)]
    labels = ["POSITIVE", "POSITIVE", "NEGATIVE", "POSITIVE", "NEUTRAL", "NEGATIVE", "NEGATIVE", "POSITIVE", "NEUTRAL"]
    frame = pl.DataFrame({
        "date": days, "label": labels, "split": ["train"] * 6 + ["test"] * 3,
        "today_label": [None, *labels[:-1]], "x": [1.0, 2.0, -1.0, 2.5, 0.1, -2.0, -1.5, 3.0, None],
    })
    preds = baseline_predictions(frame, ["x"], "test", seed=0)
    assert preds["majority"] == ["POSITIVE"] * 3
    assert preds["persistence"] == labels[5:8]  # yesterday's realized move
    assert len(preds["logistic"]) == 3 and set(preds["logistic"]) <= {"POSITIVE", "NEUTRAL", "NEGATIVE"}


def test_confusion_plot_is_a_png(tmp_path):
    path = plot_confusion(Y_TRUE, Y_PRED, "t", tmp_path / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bootstrap_interval_covers_a_known_difference():
    import numpy as np

    from tasks.evaluation.metrics import bootstrap_f1_difference

    rng = np.random.default_rng(0)
    labels = np.array(["NEGATIVE", "NEUTRAL", "POSITIVE"])
    truth = rng.choice(labels, 400)
    good = np.where(rng.random(400) < 0.8, truth, rng.choice(labels, 400))  # ~85% right
    bad = rng.choice(labels, 400)  # chance
    point, lo, hi = bootstrap_f1_difference(truth, good, bad, resamples=500, seed=1)
    assert lo <= point <= hi and lo > 0.3  # a large real difference: interval well above 0
    point, lo, hi = bootstrap_f1_difference(truth, good, good, resamples=200, seed=1)
    assert point == lo == hi == 0.0  # no difference: degenerate interval at 0
    same_quality = np.where(rng.random(400) < 0.8, truth, rng.choice(labels, 400))
    _, lo, hi = bootstrap_f1_difference(truth, good, same_quality, resamples=500, seed=1)
    assert lo < 0 < hi  # equally good models: the interval straddles 0


def test_bilstm_learns_a_text_rule_and_voting_is_weighted():
    from tasks.evaluation.textbaselines import train_bilstm, weighted_vote

    texts = [f"{w} market today" for w in ("pump moon", "dump rekt", "flat calm") for _ in range(12)]
    labels = [lab for lab in ("POSITIVE", "NEGATIVE", "NEUTRAL") for _ in range(12)]
    model = train_bilstm(texts, labels, ("NEGATIVE", "NEUTRAL", "POSITIVE"), seed=0, epochs=30)
    assert model.predict(["pump moon market today", "dump rekt market today", "flat calm market today"]) == \
        ["POSITIVE", "NEGATIVE", "NEUTRAL"]
    assert model.trainable_params > 0 and model.peak_memory_mb > 0
    votes = weighted_vote({"a": ["POSITIVE", "NEUTRAL"], "b": ["NEGATIVE", "NEGATIVE"], "c": ["NEGATIVE", "NEUTRAL"]},
                          {"a": 0.9, "b": 0.5, "c": 0.3}, ("NEGATIVE", "NEUTRAL", "POSITIVE"))
    assert votes == ["POSITIVE", "NEUTRAL"]  # 0.9 beats 0.5 + 0.3 = 0.8; then 0.9 + 0.3 beats 0.5


def test_number_answers_are_parsed_strictly():
    """The number task's answer must be one plain decimal on its first line; anything else is
    counted as unparseable, never guessed at."""
    from tasks.evaluation.scoring import parse_number

    for text, value in [("0.0123", 0.0123), ("-1.5", -1.5), ("+2", 2.0), (" 0.5 ", 0.5), ("0.5\nthe rest", 0.5)]:
        assert parse_number(text) == value, text
    for text in ["about 0.5", "0.5%", "1,000", "1e-3", ".5", "5.", "nan", "inf", "0x10", "1 2", "POSITIVE", ""]:
        assert parse_number(text) is None, text


def test_evaluate_logs_the_signal_metrics_and_the_user_sees_them_with_their_meaning(lake_copy, data_dir, monkeypatch):
    """Through the flows on the session's ingested lake (MLflow on sqlite, a real Prefect run): the LoRA run
    keeps the signal metrics under their names, the table has every model's, the reliability and backtest
    plots are artifacts, and the report (run description, evaluation/report.md, Prefect artifact) says
    what each figure means and the cost the backtest paid."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.build_dataset import build_dataset
    from flows.train_lora import train_lora
    from tasks.core.settings import load_settings
    from tasks.evaluation.report import MEANINGS
    from tasks.tracking.tracker import MlflowTracker

    monkeypatch.setenv("CHAINSIGNAL_EVALUATION__COST_BP", "25")
    build_dataset()
    result = train_lora(epochs=1, batch_size=16, micro_batch_size=16)
    tracker = MlflowTracker.from_settings(load_settings(), data_dir / "mlartifacts")
    run = tracker.client.get_run(result["run_id"])
    m = run.data.metrics
    assert -1 <= m["test_ic_ci95_low"] <= m["test_ic"] <= m["test_ic_ci95_high"] <= 1
    assert m["test_log_loss"] > 0 and m["test_brier"] > 0 and m["test_log_loss_skill"] < 1 and m["test_brier_skill"] < 1
    assert "test_backtest_return_net" in m and "test_buy_and_hold_return" in m
    assert "test_backtest_strategy_return" not in m  # the old long-only backtest without costs is gone
    assert result["evaluation"]["test_ic"] == round(m["test_ic"], 4)  # the flow's summary carries them too

    work = data_dir / "check"
    assert {"reliability_lora_test.png", "backtest_test.png"} <= {
        a.path.split("/")[-1] for a in tracker.client.list_artifacts(run.info.run_id, "plots")}
    report = (tracker.download(run.info.run_id, "evaluation", work) / "report.md").read_text()
    assert run.data.tags["mlflow.note.content"] == report  # the run's page in MLflow shows the report
    for name in ("macro-F1", "MCC", "IC", "log-loss skill", "Brier skill"):
        assert any(line.startswith(f"| {name} |") and MEANINGS[name] in line for line in report.splitlines()), name
    assert "paying 25 bp per unit of position moved" in report and run.data.tags["verdict"] in report
    assert "majority (test)" not in report and "majority (validation)" not in report  # one class by design, not a warning
    table = json.loads((work / "evaluation" / "comparison.json").read_text())
    rows = dict(zip(table["data"] and [r[table["columns"].index("model")] for r in table["data"]], table["data"], strict=True))
    ic = table["columns"].index("test_ic")
    assert rows["logistic"][ic] is not None and rows["bilstm"][ic] is not None  # models with class probabilities
    assert rows["persistence"][ic] is None and "persistence" in report.split("a class only")[0].splitlines()[-1]

    with get_client(sync_client=True) as client:
        (art,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluation-report"])),
                                       limit=1, sort="CREATED_DESC")
    assert art.data == report  # what the Prefect UI shows for the evaluate flow run


def test_the_bootstrap_scores_are_scikit_learns_to_the_last_bit():
    """The bootstrap loops count confusions with numpy instead of calling scikit-learn 2,000 times (15 s
    an interval on a busy 2-core machine): the same macro-F1 and MCC, bit for bit, on random and degenerate cases."""
    import numpy as np

    from tasks.evaluation.metrics import bootstrap_f1_difference, bootstrap_mcc

    rng = np.random.default_rng(5)
    labels = np.array(["NEGATIVE", "NEUTRAL", "POSITIVE"])
    cases = [(rng.choice(labels, n), rng.choice(labels[:k], n)) for n in (1, 2, 5, 13, 60) for k in (1, 2, 3) for _ in range(6)]
    cases += [(np.array(["POSITIVE"] * 5), np.array(["POSITIVE"] * 5)), (np.array(["NEUTRAL"] * 4), np.array(["NEGATIVE"] * 4))]
    for truth, pred in cases:
        const = np.array([truth[0]] * len(truth))
        f1 = f1_score(truth, pred, labels=list(labels), average="macro", zero_division=0)
        assert bootstrap_f1_difference(truth, pred, const, resamples=2)[0] == f1 - f1_score(
            truth, const, labels=list(labels), average="macro", zero_division=0)
        assert bootstrap_mcc(truth, pred, resamples=2)[0] == (
            matthews_corrcoef(truth, pred) if len(set(truth) | set(pred)) > 1 else 0.0)
