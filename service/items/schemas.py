"""Item models: input validation (strict: no coercion, no unknown fields) and the documented output shape."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator


def storable_text(value: str) -> str:
    """What a PostgreSQL text column can hold: no NUL (pydantic already refuses lone surrogates)."""
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000), which PostgreSQL text cannot store")
    return value


def nfc(value: str) -> str:
    """Unicode NFC: "Café" sent precomposed (U+00E9) or decomposed (e + U+0301) is stored as one string.

    Text is compared, grouped (catalog.report by category) and made unique as stored, so two
    forms of the same text would be two categories; normalised here, at the domain's edge.
    """
    return unicodedata.normalize("NFC", value)


# A sku is an identifier: ASCII letters, digits and . _ - only (so no Unicode forms to
# normalise), compared exactly, case included: "W-1" and "w-1" are two items. The pattern
# also keeps NUL out of a sku; free text needs the check.
Sku = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$")
]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(storable_text),
    AfterValidator(nfc),
]
Category = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(storable_text),
    AfterValidator(nfc),
]
# PostgreSQL bigint / integer bounds, so a valid request can never overflow a column.
PriceCents = Annotated[int, Field(ge=0, le=2**63 - 1)]
Stock = Annotated[int, Field(ge=0, le=2**31 - 1)]

_INPUT = ConfigDict(extra="forbid", strict=True)


class ItemCreate(BaseModel):
    model_config = _INPUT

    sku: Sku
    name: Name
    category: Category
    price_cents: PriceCents
    stock: Stock


class ItemUpdate(BaseModel):
    """PATCH body: any of the mutable fields; `null` is not a value any of them takes."""

    model_config = _INPUT

    name: Name | None = None
    category: Category | None = None
    price_cents: PriceCents | None = None
    stock: Stock | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: object) -> object:
        if isinstance(data, dict):
            nulls = [key for key, value in data.items() if value is None]
            if nulls:
                raise ValueError(f"fields cannot be null: {', '.join(sorted(nulls))}")
        return data

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("at least one of name, category, price_cents, stock is required")
        return self


class Item(BaseModel):
    id: int
    sku: str
    name: str
    category: str
    price_cents: int
    stock: int
    created_at: datetime
    updated_at: datetime


class ItemPage(BaseModel):
    items: list[Item]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class ItemBatch(BaseModel):
    items: list[Item] = Field(description="Found items, in the order their ids were requested.")
    missing: list[int] = Field(description="Requested ids that do not exist.")
