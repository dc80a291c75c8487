"""Pseudonymised case keys: a keyed hash of the hospital's patient ID, never the ID itself.

The same patient ID always gives the same key on one installation (so follow-up
can find the case), but the key cannot be turned back into the ID without the
secret, which lives next to the database and never leaves the hospital.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_ENV = "ICCA_PSEUDONYM_SECRET"


def load_secret(path: Path) -> bytes:
    """The installation's secret: ``$ICCA_PSEUDONYM_SECRET``, else a key file (created 0600 once)."""
    from_env = os.environ.get(SECRET_ENV)
    if from_env:
        return from_env.encode()
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


def case_key(patient_id: str | None, secret: bytes) -> str:
    """``"P-"`` + 12 hex digits of HMAC-SHA256(secret, patient ID); a random key without an ID."""
    cleaned = (patient_id or "").strip()
    if not cleaned:
        return "R-" + secrets.token_hex(6)
    return "P-" + hmac.new(secret, cleaned.encode(), hashlib.sha256).hexdigest()[:12]
