"""Run keys and tags: what they may hold, checked before a start reaches the
database (which checks again, for callers in other languages).

- A key ("order-42") is a string of 1 to 512 characters. While a run of the
  flow started with that key is unfinished, starting the flow with the key
  returns that run; once it has finished, the key starts a new one.
- Tags ({"tenant": "acme"}) are a flat object of strings, stored on the run
  and usable as a filter (containment: every tag given must match).
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from pgflow.errors import InvalidInputError

MAX_KEY_LENGTH = 512


def check_key(flow_slug: str, key: object, which: str = "") -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidInputError(f"Flow {flow_slug!r}: the key{which} must be a string of 1 to "
                                f"{MAX_KEY_LENGTH} characters, got {key!r:.80}")
    return key


def check_tags(where: str, tags: object) -> dict[str, str] | None:
    """The tags as a dict of strings (None for none), or InvalidInputError naming `where`."""
    if tags is None:
        return None
    if not isinstance(tags, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise InvalidInputError(f"{where}: tags must be a mapping of strings to strings, such "
                                f"as {{'tenant': 'acme'}}, got {tags!r:.200}")
    return dict(tags) or None


def parse_tag(text: str) -> tuple[str, str]:
    """'tenant=acme' -> ('tenant', 'acme'), for the command line."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"{text!r} is not a tag; write it as name=value (e.g. tenant=acme)")
    return name, value


def encode_tags(tags: dict[str, str] | None) -> str | None:
    """Checked tags as JSON text for a query parameter (None for none)."""
    return None if tags is None else orjson.dumps(tags).decode()
