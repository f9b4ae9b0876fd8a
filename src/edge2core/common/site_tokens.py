"""A site's tokens at the core, and the name its leaf link logs in with.

`[core] site_tokens` maps a site id to its token, or to two tokens separated by a comma
("OLD,NEW") while the site's token is being rotated: the core then accepts either, on HTTPS
(uploads and reads) and on the leaf link, so the site can switch to the new one whenever it
restarts and the old one is removed afterwards (docs/security.md, "Tokens and keys").

nats-server names every user once, so each token is its own leaf user, named from the site
and a digest of the token (`leaf_user`): the site derives the same name from its own token
and never needs to know which of its tokens the core lists first.
"""

from __future__ import annotations

import hashlib

__all__ = ["leaf_user", "tokens_of"]


def tokens_of(value: str) -> tuple[str, ...]:
    """The tokens in a `site_tokens` value: "T" -> ("T",), "OLD,NEW" -> ("OLD", "NEW").
    Blank parts are dropped (a value of only blanks admits nothing)."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def leaf_user(site: str, token: str) -> str:
    """The core's broker user for `site` logging in with `token`: `<site>.<12 hex>`, the hex
    from SHA-256 of the token (a name, not a secret: the token itself is the password)."""
    return f"{site}.{hashlib.sha256(token.encode()).hexdigest()[:12]}"
