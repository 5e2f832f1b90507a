"""digest: the sha256 that keys and fingerprints of small payloads use (a string, or sorted-key JSON).

What is too large to hold as one string is hashed as a stream where it is read: clip bytes and folder
listings (lib.data.scan) and encoder weights (lib.model.trunk).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(payload: Any, length: int = 24) -> str:
    """First `length` hex digits of the sha256 of payload: a str as is, anything else as sorted-key JSON."""
    text = payload if isinstance(payload, str) else json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
