"""Timestamps as snapstore writes them: UTC, ISO-8601, microseconds, trailing ``Z``."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    """The current time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    # The same text as format_time, without strftime (a commit takes the time once per snapshot).
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"


def format_time(moment: datetime) -> str:
    """An aware or naive-UTC datetime as snapstore's timestamp text."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """An ISO-8601 time as an aware UTC datetime; a time without offset is taken as UTC."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)
