"""Make an API key: `python -m service.apikeys NAME SCOPE [SCOPE ...]`.

Prints the key (give it to the client; it is not stored anywhere) and the
entry to add to the API_KEYS setting (a JSON list), which holds only its hash.
"""

from __future__ import annotations

import json
import sys

from service.auth import new_key
from service.config import SCOPES, ApiKeySpec


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(
            f"usage: python -m service.apikeys NAME SCOPE [SCOPE ...]  (scopes: {', '.join(sorted(SCOPES))})",
            file=sys.stderr,
        )
        return 2
    token, digest = new_key()
    try:
        spec = ApiKeySpec(name=argv[1], sha256=digest, scopes=frozenset(argv[2:]))
    except ValueError as error:
        print(f"invalid key: {error}", file=sys.stderr)
        return 2
    print(f"key (shown once):  {token}")
    entry = {"name": spec.name, "sha256": spec.sha256, "scopes": sorted(spec.scopes)}
    print(f"API_KEYS entry:    {json.dumps(entry)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
