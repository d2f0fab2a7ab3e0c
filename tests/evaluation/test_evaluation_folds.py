"""Walk-forward folds: every labelled day after the first test day is scored exactly once, by a fold that
trained only on days before it, with the embargo kept on both sides of its validation days."""

from datetime import date, timedelta

import pytest

from tasks.evaluation.folds import walk_forward_folds

DAYS = [date(2020, 1, 1) + timedelta(days=i) for i in range(400)]


@pytest.mark.parametrize("train_days", [None, 120])
def test_each_day_is_scored_once_by_a_fold_that_never_saw_it(train_days):
    folds = walk_forward_folds(DAYS, first_test_day=date(2020, 7, 1), step_days=30, validation_days=20,
                               embargo_days=2, train_days=train_days)
    scored = [d for f in folds for d in DAYS if f.test[0] <= d <= f.test[1]]
    assert scored == [d for d in DAYS if d >= date(2020, 7, 1)]
    for f in folds:
        assert f.train[1] + timedelta(days=2) < f.validation[0] and f.validation[1] + timedelta(days=2) < f.test[0]
        if train_days:
            assert (f.train[1] - f.train[0]).days + 1 == train_days
        else:
            assert f.train[0] == DAYS[0]


def test_gaps_in_the_labelled_days_are_counted_in_days_that_have_labels():
    days = [d for d in DAYS if d.day != 15]  # one day a month unlabelled
    folds = walk_forward_folds(days, first_test_day=date(2020, 7, 1), step_days=10, validation_days=10, embargo_days=1)
    assert all(f.test[0] in days and f.test[1] in days for f in folds)
    assert sum(1 for d in days if folds[0].test[0] <= d <= folds[0].test[1]) == 10


def test_too_little_history_gives_no_fold():
    assert walk_forward_folds(DAYS[:40], first_test_day=DAYS[30], step_days=5, validation_days=10, embargo_days=1) == []
