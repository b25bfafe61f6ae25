"""What callers of the Client pass, checked before any SQL: flow slugs, run
ids, run inputs (plain JSON within a size limit), and the lists start_flows
takes in parallel. Each refusal names the flow and says what to send."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pgflow import jsondata
from pgflow.errors import FlowNotFoundError, InvalidInputError
from pgflow.flow import MAX_SLUG_LENGTH, SLUG_PATTERN, Flow
from pgflow.tags import check_tags, encode_tags

# The largest run input start_flow accepts, as JSON. A run's input is stored
# once but read again for every root step's claim (and by ctx.flow_input),
# passed whole through a supervisor's memory and an executor's pipe, so it is
# kept well under the 64 MiB an executor may answer with and far under
# jsonb's 255 MiB: large data belongs in object storage or a table, with a
# reference in the input. Client(max_input_bytes=...) changes it.
DEFAULT_MAX_INPUT_BYTES = 16 * 1024 * 1024
# jsonb cannot hold a document over 255 MiB.
MAX_INPUT_BYTES_LIMIT = 255 * 1024 * 1024
# One start_flows call sends its inputs as one jsonb[] parameter, and
# Postgres refuses a value of 1 GiB or more: leave room for its text form.
MAX_BATCH_BYTES = 256 * 1024 * 1024


def encode_input(flow_slug: str, value: Any, max_bytes: int, which: str = "") -> str:
    """The run input as JSON text, or InvalidInputError saying what to change."""
    try:
        data = jsondata.encode(value)
    except jsondata.NotJsonError as exc:
        raise InvalidInputError(
            f"Flow {flow_slug!r}: the run input{which} is not JSON: {exc}. "
            "Nothing was started."
        ) from None
    if len(data) > max_bytes:
        raise InvalidInputError(
            f"Flow {flow_slug!r}: the run input{which} is {len(data):,} bytes of JSON, over "
            f"the limit of {max_bytes:,} (Client(max_input_bytes=...)). Nothing "
            "was started; store large data elsewhere (object storage, a table) and pass a "
            "reference to it."
        )
    return data.decode()



def flow_slug(flow: str | Flow) -> str:
    """The slug of `flow`; a slug no flow can have is a FlowNotFoundError here,
    before it reaches the database (where it would be one too)."""
    if isinstance(flow, Flow):
        return flow.slug
    if not isinstance(flow, str):
        raise InvalidInputError(f"A flow is a Flow or its slug (a str), got {type(flow).__name__}")
    if len(flow) > MAX_SLUG_LENGTH or not SLUG_PATTERN.match(flow):
        raise FlowNotFoundError(
            f"Flow {preview(flow)} is not registered, and cannot be: a flow slug matches "
            f"{SLUG_PATTERN.pattern} and has at most {MAX_SLUG_LENGTH} characters")
    return flow


def preview(text: str, limit: int = 80) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(text)} characters)"


def check_parallel(flow_slug: str, what: str, inputs: Sequence[Any],
                    values: Sequence[Any]) -> None:
    if isinstance(values, str | bytes) or len(values) != len(inputs):
        count = "a string" if isinstance(values, str | bytes) else len(values)
        raise InvalidInputError(
            f"Flow {flow_slug!r}: {len(inputs)} inputs but {count} {what}; "
            f"give a list with one per input (None where there is none)"
        )


def tags_per_run(flow_slug: str, tags: Any, count: int) -> list[str | None] | None:
    """start_flows' tags: one mapping for every run, or a sequence with one per run."""
    if tags is None:
        return None
    if isinstance(tags, Mapping):
        encoded = encode_tags(check_tags(f"Flow {flow_slug!r}", tags))
        return [encoded] * count
    check_parallel(flow_slug, "tags", [None] * count, tags)
    return [encode_tags(check_tags(f"Flow {flow_slug!r}, run input #{i + 1}", t))
            for i, t in enumerate(tags)]


def as_uuid(value: uuid.UUID | str, where: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        shown = preview(value) if isinstance(value, str) else repr(value)
        raise InvalidInputError(f"{where}: run id {shown} is not a UUID") from None
