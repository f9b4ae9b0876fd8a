"""Per-site upload credentials: `Authorization: Bearer <the site's token>`."""

from __future__ import annotations

import hmac
from collections.abc import Mapping


def site_token_ok(tokens: Mapping[str, str], site: str | None, authorization: str | None) -> bool:
    """True when no tokens are configured (development), or the header carries `site`'s token
    (any site's, when `site` is None). A site without a token is never admitted."""
    if not tokens:
        return True
    if not authorization or not authorization.startswith("Bearer "):
        return False
    presented = authorization.removeprefix("Bearer ")
    candidates = tokens.values() if site is None else [tokens[site]] if site in tokens else []
    return any(hmac.compare_digest(presented.encode(), t.encode()) for t in candidates)
