"""Importing the flows a supervisor serves."""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Iterable

from pgflow import Flow, FlowDefinitionError, PgflowError


class FlowImportError(PgflowError):
    """A flow module could not be imported or holds no usable Flow."""


def load_flows(specs: Iterable[str]) -> dict[str, Flow]:
    """Flows by slug from specs like "myapp.flows" (every top-level Flow of the
    module) or "myapp.flows:orders" (one attribute)."""
    found: dict[str, Flow] = {}
    for spec in specs:
        for flow in _load_spec(spec):
            other = found.get(flow.slug)
            if other is not None and other is not flow:
                raise FlowImportError(
                    f"Flow {flow.slug!r} is defined twice (in {spec!r} and earlier); "
                    "flow slugs must be unique per supervisor"
                )
            try:
                flow.validate()
            except FlowDefinitionError as exc:
                raise FlowImportError(f"{spec}: {exc}") from None
            found[flow.slug] = flow
    return found


def _load_spec(spec: str) -> list[Flow]:
    module_name, _, attribute = spec.partition(":")
    if "." not in sys.path and "" not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: modules in the working directory import
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        raise FlowImportError(
            f"cannot import flow module {module_name!r}: {detail}. Check --flows / PGFLOW_FLOWS "
            "and that the module is importable (PYTHONPATH, installed package)"
        ) from exc
    if attribute:
        value = getattr(module, attribute, None)
        if not isinstance(value, Flow):
            raise FlowImportError(
                f"{spec!r}: {module_name}.{attribute} is {type(value).__name__}, not a pgflow Flow"
            )
        return [value]
    flows = [value for value in vars(module).values() if isinstance(value, Flow)]
    if not flows:
        raise FlowImportError(
            f"flow module {module_name!r} defines no Flow at its top level; "
            "define one there or name it as module:attribute"
        )
    return flows
