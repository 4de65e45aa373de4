"""Whether a date of birth can be true."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta


def in_the_future(born: date, today: date | None = None) -> bool:
    """A date of birth after tomorrow: a keying error, never a patient (an unborn baby has no
    date of birth yet). Tomorrow is allowed: a baby born just after midnight in UK summer time
    is born "tomorrow" for a server on UTC."""
    today = today or datetime.now(UTC).date()
    return born > today + timedelta(days=1)
