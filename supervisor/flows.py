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
    except (Exception, SystemExit) as exc:  # sys.exit() at import is a broken module too
        raise FlowImportError(_import_failure(module_name, exc)) from exc
    if attribute:
        value = getattr(module, attribute, _MISSING)
        if value is _MISSING:
            found = _top_level_flows(module)
            raise FlowImportError(
                f"{spec!r}: module {module_name!r} ({module.__file__}) has no attribute "
                f"{attribute!r}; its top-level Flows: "
                + (", ".join(found) if found else "none")
            )
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


_MISSING = object()


def _top_level_flows(module: object) -> list[str]:
    return [name for name, value in vars(module).items() if isinstance(value, Flow)]


def _import_failure(module_name: str, exc: BaseException) -> str:
    """One line: the module could not be found (check the path), or it raised
    while importing (where, and what)."""
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
    if isinstance(exc, ModuleNotFoundError) and exc.name and (
            module_name == exc.name or module_name.startswith(exc.name + ".")):
        return (f"cannot import flow module {module_name!r}: no module named {exc.name!r}. Check "
                "--flows / PGFLOW_FLOWS and that the module is importable from the working "
                "directory, PYTHONPATH or an installed package")
    location = _where_raised(exc)
    return (f"flow module {module_name!r} raised while being imported, at {location}: {detail}. "
            "Fix the module (importing it with python -c 'import "
            f"{module_name}' shows the whole traceback)")


def _where_raised(exc: BaseException) -> str:
    """file:line of the error: the line a SyntaxError points at, else the innermost
    frame outside the import machinery."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<frozen importlib")
              and not f.filename.endswith("importlib/__init__.py")
              and f.filename != __file__]
    if not frames:
        return "an unknown place"
    return f"{frames[-1].filename}:{frames[-1].lineno}"
