"""Follow-up outcomes: whether a saved case had early recurrence, from the dates a surgeon enters.

Early recurrence = recurrence ≤ :data:`EARLY_RECURRENCE_DAYS` (365) days after surgery, as in
the paper. A patient followed for fewer than 365 days without recurrence is **unknown**, never
negative: counting them as negatives would bias every local validation towards specificity.

Privacy: the dates are used once, to compute intervals, and are not stored. Dates of an
individual's care are identifiers (HIPAA Safe Harbor keeps only the year), and the validation
needs only the intervals (days to recurrence, days followed) and the status. Residual risk,
stated rather than hidden: the time an outcome was entered is stored (outcome row and audit
trail), so when it is entered on the day of the follow-up visit, that day minus the interval
gives the surgery date. The database is protected as patient data for that reason too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from core.errors import UserFacingError

EARLY_RECURRENCE_DAYS = 365

EARLY = "early recurrence"
NOT_EARLY = "no early recurrence"
UNKNOWN = "unknown"


class OutcomeError(UserFacingError):
    """Follow-up dates that cannot be right (order, future, missing)."""


@dataclass(frozen=True)
class FollowUp:
    """A case's follow-up as intervals from surgery.

    Attributes:
        days_to_recurrence: days from surgery to recurrence, or ``None`` (no recurrence seen).
        days_followed: days from surgery to the last follow-up without recurrence, or ``None``
            when a recurrence was recorded.
    """

    days_to_recurrence: int | None
    days_followed: int | None

    @property
    def early_recurrence(self) -> bool | None:
        """True / False, or ``None`` (unknown) when followed < 365 days without recurrence."""
        if self.days_to_recurrence is not None:
            return self.days_to_recurrence <= EARLY_RECURRENCE_DAYS
        if self.days_followed is not None and self.days_followed >= EARLY_RECURRENCE_DAYS:
            return False
        return None

    @property
    def status(self) -> str:
        return {True: EARLY, False: NOT_EARLY, None: UNKNOWN}[self.early_recurrence]

    def describe(self) -> str:
        """One sentence for the page, with the interval it rests on."""
        if self.days_to_recurrence is not None:
            return f"{self.status.capitalize()}: recurrence {self.days_to_recurrence} days after surgery."
        if self.early_recurrence is False:
            return f"No early recurrence: followed {self.days_followed} days after surgery without recurrence."
        return (
            f"Unknown: followed {self.days_followed} days without recurrence, fewer than {EARLY_RECURRENCE_DAYS}; "
            "record a later follow-up or a recurrence when there is one."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "days_to_recurrence": self.days_to_recurrence,
            "days_followed": self.days_followed,
        }


def follow_up_from_dates(
    surgery: date | None, recurrence: date | None, last_follow_up: date | None, today: date
) -> FollowUp:
    """Check the dates and turn them into intervals.

    Args:
        surgery: date of resection.
        recurrence: date recurrence was diagnosed, or ``None``.
        last_follow_up: date of the last follow-up without recurrence (when ``recurrence`` is ``None``).
        today: the date of entry (nothing may lie after it).

    Raises:
        OutcomeError: a missing surgery date, both or neither of the other two dates, a date in
            the future, or a recurrence / follow-up not after surgery.
    """
    if surgery is None:
        raise OutcomeError("Enter the date of surgery first.")
    if (recurrence is None) == (last_follow_up is None):
        raise OutcomeError(
            "Enter either the date recurrence was diagnosed or the date of the last follow-up without recurrence."
        )
    for name, value in (("surgery", surgery), ("recurrence", recurrence), ("last follow-up", last_follow_up)):
        if value is not None and value > today:
            raise OutcomeError(f"The date of {name} ({value.isoformat()}) lies in the future; check it.")
    if recurrence is not None:
        if recurrence <= surgery:
            raise OutcomeError("The recurrence date must be after the date of surgery.")
        return FollowUp(days_to_recurrence=(recurrence - surgery).days, days_followed=None)
    assert last_follow_up is not None
    if last_follow_up < surgery:
        raise OutcomeError("The last follow-up cannot be before the date of surgery.")
    return FollowUp(days_to_recurrence=None, days_followed=(last_follow_up - surgery).days)
