"""`pgflow supervise`: its options are generated from supervisor.settings.Settings
(names, types, defaults, descriptions), so `--help` cannot drift from the code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
from typing import Any

import pydantic
from pydantic_core import PydanticUndefined

from supervisor import preflight
from supervisor.preflight import EXIT_CONFIG, Problem
from supervisor.redact import mask_password
from supervisor.settings import Settings, env_file_names, unknown_variables

NAME = "supervise"
HELP = "run the supervisor: claim tasks and run them in forked executors"
DESCRIPTION = ("Every option is also a PGFLOW_<NAME> environment variable (and may come from "
               "--env-file). Precedence: option > environment > env file > default.")

log = logging.getLogger("pgflow.supervisor")


def _option_type(annotation: Any) -> tuple[Any, list[str] | None]:
    """argparse type and choices for a settings field's annotation."""
    if typing.get_origin(annotation) is typing.Literal:
        return str, [str(choice) for choice in typing.get_args(annotation)]
    if annotation in (int, float):
        return annotation, None
    return str, None  # str, and list[str] given as "a,b"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        flag = f"--{name.replace('_', '-')}"
        text = field.description or ""
        if field.default is not PydanticUndefined and field.default_factory is None:
            text = f"{text} (default: {field.default})" if text else f"default: {field.default}"
        text += f" [PGFLOW_{name.upper()}]"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=text)
            continue
        kind, choices = _option_type(field.annotation)
        parser.add_argument(flag, dest=name, type=kind, choices=choices, default=None,
                            metavar=name.upper() if choices is None else None,
                            help=text + (" (required)" if field.is_required() else ""))
    parser.add_argument("--env-file", help="read PGFLOW_* settings from this file too")


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings from options, environment and env file; a Problem (78) when invalid."""
    names = list(os.environ)
    if args.env_file is not None:
        if not os.path.isfile(args.env_file):
            raise Problem(f"--env-file {args.env_file}: no such file", EXIT_CONFIG)
        names += env_file_names(args.env_file)
    for warning in unknown_variables(names):
        print(f"pgflow supervise: warning: {warning}", file=sys.stderr)
    overrides = {name: getattr(args, name) for name in Settings.model_fields
                 if getattr(args, name, None) is not None}
    try:
        return Settings(_env_file=args.env_file, **overrides)  # type: ignore[call-arg]
    except pydantic.ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise Problem(f"invalid settings: {problems}", EXIT_CONFIG) from None


def _describe(error: Any) -> str:
    name = ".".join(str(p) for p in error["loc"])
    if not name:  # a rule across settings, whose message names them
        return mask_password(error["msg"])
    flag = f"--{name.replace('_', '-')} / PGFLOW_{name.upper()}"
    return f"{flag}: {mask_password(error['msg'])}"


def run(args: argparse.Namespace) -> int:
    from supervisor import logs
    from supervisor.flows import FlowImportError, load_flows
    from supervisor.service import serve

    settings = load_settings(args)
    logs.configure(settings.log_level, settings.log_format)
    try:
        flows = load_flows(settings.flows)
    except FlowImportError as exc:
        raise Problem(str(exc), EXIT_CONFIG) from None
    preflight.check_url(settings.database_url)
    if settings.listen_url:
        preflight.check_url(settings.listen_url, "PGFLOW_LISTEN_URL / --listen-url")
    return serve(settings, flows)
