"""Path and query parameters several routers share, with the limits the core keeps."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from edge2core.common.events import SHA256_PATTERN
from edge2core.common.identifiers import ID_PATTERN

# Versions, ids and counts the core keeps in 32-bit integer columns (PostgreSQL `integer`):
# a bigger number can name nothing, and is refused before it reaches the database.
INT32_MAX = 2**31 - 1
Version = Annotated[int, Path(ge=1, le=INT32_MAX, description="a version number (1, 2, ...)")]
PhotoId = Annotated[str, Path(pattern=SHA256_PATTERN, description="the photo's sha256")]
SiteId = Annotated[str, Path(pattern=ID_PATTERN, max_length=64, description="a site's id")]
