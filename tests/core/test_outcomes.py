"""core.outcomes: early recurrence from follow-up dates; unknown is never negative; bad dates are sentences."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from core.outcomes import EARLY, NOT_EARLY, UNKNOWN, FollowUp, OutcomeError, follow_up_from_dates

SURGERY = date(2024, 3, 1)
TODAY = date(2026, 12, 2)


@pytest.mark.parametrize(
    ("recurrence_days", "followed_days", "status"),
    [
        (30, None, EARLY),
        (365, None, EARLY),  # the paper's "within a year": day 365 counts
        (366, None, NOT_EARLY),  # a late recurrence is not an early one
        (None, 365, NOT_EARLY),
        (None, 364, UNKNOWN),  # followed less than a year without recurrence: unknown, never negative
        (None, 0, UNKNOWN),
    ],
)
def test_status_from_intervals(recurrence_days: int | None, followed_days: int | None, status: str) -> None:
    recurrence = SURGERY + timedelta(days=recurrence_days) if recurrence_days is not None else None
    follow = SURGERY + timedelta(days=followed_days) if followed_days is not None else None
    follow_up = follow_up_from_dates(SURGERY, recurrence, follow, TODAY)
    assert follow_up.status == status
    assert follow_up == FollowUp(recurrence_days, followed_days)
    assert str(recurrence_days if recurrence_days is not None else followed_days) in follow_up.describe()


@pytest.mark.parametrize(
    ("surgery", "recurrence", "follow", "sentence"),
    [
        (None, date(2024, 5, 1), None, "Enter the date of surgery first."),
        (SURGERY, None, None, "Enter either the date recurrence was diagnosed or the date of the last follow-up"),
        (SURGERY, date(2024, 5, 1), date(2024, 6, 1), "Enter either the date recurrence was diagnosed"),
        (SURGERY, SURGERY, None, "The recurrence date must be after the date of surgery."),
        (SURGERY, date(2024, 1, 1), None, "The recurrence date must be after the date of surgery."),
        (SURGERY, None, date(2024, 1, 1), "The last follow-up cannot be before the date of surgery."),
        (SURGERY, date(2027, 1, 1), None, "The date of recurrence (2027-01-01) lies in the future; check it."),
        (date(2027, 1, 1), None, date(2027, 2, 1), "The date of surgery (2027-01-01) lies in the future; check it."),
    ],
)
def test_impossible_dates_are_one_sentence(
    surgery: date | None, recurrence: date | None, follow: date | None, sentence: str
) -> None:
    with pytest.raises(OutcomeError) as caught:
        follow_up_from_dates(surgery, recurrence, follow, TODAY)
    assert str(caught.value).startswith(sentence) and "\n" not in str(caught.value)
