"""Handler signatures: a handler takes (input) or (input, ctx), read once
when the step is defined so the executor knows how to call it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pgflow.errors import FlowDefinitionError

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def takes_ctx(where: str, handler: Callable[..., Any]) -> bool:
    """Whether the handler is called (input, ctx) or (input), read once from its signature."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        raise FlowDefinitionError(f"{where}: cannot read the signature of handler {handler!r}; "
                                  "use a function taking (input) or (input, ctx)") from None
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in _POSITIONAL]
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    required = [p.name for p in positional if p.default is inspect.Parameter.empty]
    keyword_only = [p.name for p in params
                    if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty]
    if keyword_only:
        raise FlowDefinitionError(f"{where}: the handler requires keyword-only argument(s) "
                                  f"{', '.join(keyword_only)}; a handler takes (input) or "
                                  "(input, ctx)")
    if len(required) > 2:
        raise FlowDefinitionError(f"{where}: the handler requires {len(required)} arguments "
                                  f"({', '.join(required)}); a handler takes (input) or "
                                  "(input, ctx)")
    if not positional and not varargs:
        raise FlowDefinitionError(f"{where}: the handler takes no argument; a handler takes "
                                  "(input) or (input, ctx)")
    return len(positional) >= 2 or varargs
