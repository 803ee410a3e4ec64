"""Numbers read from text: ASCII decimal digits and nothing else.

Python's own parsers accept far more than anyone documents: `str.isdigit()`
is true for "²" (which `int()` then refuses: a 500), `int()` takes "٣"
(Arabic-Indic), full-width "\uff11", "+1", " 1 " and "1_000", and pydantic's lax
mode adds "1.0" and numbers past any column's range. Every number this
service reads from text (query parameters, ids, headers, settings) goes
through this module: ASCII digits, at most a bound's worth of them, else the
caller's 4xx (or, for settings, a startup error naming the variable).
"""

from __future__ import annotations

import re
from typing import Final

# [0-9], never \d: in a str pattern \d matches every Unicode decimal digit.
DIGITS: Final = re.compile(r"[0-9]+")
DECIMAL_FRACTION: Final = re.compile(r"[0-9]+(\.[0-9]+)?")
# 2**63 - 1 (PostgreSQL bigint) has 19 digits; int() refuses more than 4300 by default (a ValueError).
MAX_DIGITS: Final = 19


def parse_decimal(text: str | bytes, maximum: int = 2**63 - 1) -> int | None:
    """`text` as a non-negative int if it is 1-19 ASCII digits and at most `maximum`; else None."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    if len(text) > MAX_DIGITS or not DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if value <= maximum else None


def ascii_int(value: object) -> object:
    """A pydantic "before" validator: a str must be ASCII digits; other types pass to the field's own checks."""
    if isinstance(value, str) and parse_decimal(value) is None:
        raise ValueError("expected a whole number from 0 to 2**63 - 1 written with the ASCII digits 0-9")
    return value


def ascii_decimal(value: object) -> object:
    """A pydantic "before" validator for a float read from text: digits, optionally a point and more digits."""
    if isinstance(value, str) and (len(value) > 32 or not DECIMAL_FRACTION.fullmatch(value)):
        raise ValueError('expected a number written with the ASCII digits 0-9 and an optional ".", e.g. 2 or 0.5')
    return value
