"""Cursors round-trip, and any change to one, or a different key, is refused."""

from __future__ import annotations

import pytest

from service.pagination import InvalidCursor, decode_cursor, encode_cursor

KEY = b"k" * 32


@pytest.mark.parametrize("last_id", [0, 1, 4242, 2**63 - 1])
def test_round_trip(last_id: int) -> None:
    assert decode_cursor(KEY, encode_cursor(KEY, last_id)) == last_id


def test_cursor_is_opaque_and_url_safe() -> None:
    cursor = encode_cursor(KEY, 12345)
    assert "12345" not in cursor
    assert all(ch.isalnum() or ch in "-_" for ch in cursor)


def test_every_single_character_change_is_refused() -> None:
    cursor = encode_cursor(KEY, 77)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for position in range(len(cursor)):
        for replacement in {alphabet[(alphabet.index(cursor[position]) + 1) % 64], "A"} - {cursor[position]}:
            forged = cursor[:position] + replacement + cursor[position + 1 :]
            with pytest.raises(InvalidCursor):
                decode_cursor(KEY, forged)


@pytest.mark.parametrize("garbage", ["", "%%%", "abc", "A" * 200, "é"])
def test_garbage_is_refused(garbage: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(KEY, garbage)


def test_a_cursor_from_another_key_is_refused() -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(b"other" * 8, encode_cursor(KEY, 5))
