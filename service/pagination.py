"""Opaque keyset cursors: the last id of a page, signed so clients cannot forge or edit them.

A cursor is base64url(8-byte id || 16-byte HMAC-SHA256 tag) keyed by
SECRET_KEY, so every pod with the same key accepts every other pod's cursors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct

from service.errors import BadRequest


class InvalidCursor(BadRequest):
    """A cursor this API did not issue, or one edited since: 400."""

    title = "Invalid cursor"
    problem_type = "/problems/invalid-cursor"


_ID = struct.Struct(">q")
_TAG_BYTES = 16
_CURSOR = re.compile(r"[A-Za-z0-9_-]{32}")  # 24 bytes, base64url without padding
_CONTEXT = b"items-cursor-v1:"  # a new cursor format gets a new context, so old tokens fail cleanly


def _tag(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, _CONTEXT + payload, hashlib.sha256).digest()[:_TAG_BYTES]


def encode_cursor(key: bytes, last_id: int) -> str:
    payload = _ID.pack(last_id)
    return base64.urlsafe_b64encode(payload + _tag(key, payload)).rstrip(b"=").decode()


def decode_cursor(key: bytes, cursor: str) -> int:
    # Exactly what encode_cursor makes: the decoder alone would skip stray characters.
    if not _CURSOR.fullmatch(cursor):
        raise InvalidCursor("The cursor is not one this API issued.")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise InvalidCursor("The cursor is not one this API issued.") from None
    payload, tag = raw[: _ID.size], raw[_ID.size :]
    if len(payload) != _ID.size or not hmac.compare_digest(tag, _tag(key, payload)):
        raise InvalidCursor("The cursor is not one this API issued.")
    (last_id,) = _ID.unpack(payload)
    return int(last_id)
