"""Masking database passwords in anything we print or log."""

from __future__ import annotations

import re

# scheme://user:PASSWORD@host and password=PASSWORD (conninfo or URL query).
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*:)[^@\s]*@")
_KEY_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)

MASK = "***"


def mask_password(text: str) -> str:
    """`text` with every password in a connection URL or conninfo string masked."""
    text = _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)
    return _KEY_PASSWORD.sub(rf"\g<1>{MASK}", text)
