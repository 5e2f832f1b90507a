"""The one way cache keys and fingerprints are made: sha256 of a string, or of sorted-key JSON."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(payload: Any, length: int = 24) -> str:
    """First `length` hex digits of the sha256 of payload: a str as is, anything else as sorted-key JSON."""
    text = payload if isinstance(payload, str) else json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
