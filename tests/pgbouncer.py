"""A real PgBouncer in front of the test server, for tests and benchmarks.

`PgBouncer(server_dsn, mode)` writes a pgbouncer.ini and an auth file into a
temporary directory, starts `pgbouncer` on a free port in that pool mode,
routes every database name to the server of `server_dsn` (so each test's
own database is reachable through it) and stops it on `stop()`. Its settings
are PgBouncer's defaults except those a test needs (listen address and
port, pool sizes, no Unix socket): notably `ignore_startup_parameters` is
empty, so a client that sends a session setting as a startup parameter is
refused, as a stock PgBouncer refuses it. `settings` and `databases` replace
those defaults (`example_config` reads deploy/pgbouncer/pgbouncer.ini into them).

PgBouncer refuses to run as root: started by root, it switches to `nobody`
(its `user` setting), so its directory is made readable by everyone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

PoolMode = Literal["session", "transaction"]

BINARY = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/local/bin/pgbouncer") if os.access(p, os.X_OK)),
    None)
MISSING = ("pgbouncer is not installed (apt-get install pgbouncer, brew install pgbouncer); "
           ".ci/run installs it")


class PgBouncerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quote(value: str) -> str:
    """A value for a libpq key=value string in the [databases] section."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# Settings of the example that only make sense on a real host; the test's own replace them.
_HOST_SETTINGS = {"listen_addr", "listen_port", "unix_socket_dir", "auth_type", "auth_file",
                  "logfile", "pidfile", "admin_users", "stats_users", "user"}


def example_config(path: Path, dbname: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The [pgbouncer] settings and [databases] entries of a shipped example
    (deploy/pgbouncer/pgbouncer.ini), each database pointed at `dbname` on
    the test server, without the settings that name places on a real host."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith((";", "#")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current[key.strip()] = value.strip()
    settings = {k: v for k, v in sections["pgbouncer"].items() if k not in _HOST_SETTINGS}
    databases = {}
    for name, entry in sections["databases"].items():
        params = dict(part.split("=", 1) for part in entry.split())
        params.pop("host", None)
        params.pop("port", None)
        databases[name] = {**params, "dbname": dbname}
    return settings, databases


class PgBouncer:
    def __init__(self, server_dsn: str, mode: PoolMode = "session", *, pool_size: int = 20,
                 settings: dict[str, str] | None = None,
                 databases: dict[str, dict[str, str]] | None = None) -> None:
        if BINARY is None:
            raise PgBouncerError(MISSING)
        self.server_dsn = server_dsn
        server = conninfo_to_dict(server_dsn)
        self.user = str(server.get("user") or os.environ.get("PGUSER") or "postgres")
        password = str(server.get("password") or "")
        self.dir = Path(tempfile.mkdtemp(prefix=f"pgflow-pgbouncer-{mode}-"))
        self.dir.chmod(0o755)
        target = {"host": str(server.get("host") or "127.0.0.1"),
                  "port": str(server.get("port") or 5432)}
        if password:
            target["password"] = password
        self.databases = databases or {"*": {}}
        self.port = free_port()
        config = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.dir / "userlist.txt"),
            "pool_mode": mode,
            "default_pool_size": str(pool_size),
            "max_client_conn": "500",
            "server_login_retry": "1",
            **(settings or {}),
            **({"user": "nobody"} if os.geteuid() == 0 else {}),
        }
        self.mode = config["pool_mode"]
        (self.dir / "userlist.txt").write_text(f'"{self.user}" "{password}"\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            + "".join(f"{name} = " + " ".join(f"{k}={_quote(v)}"
                                              for k, v in {**target, **params}.items()) + "\n"
                      for name, params in self.databases.items())
            + "\n[pgbouncer]\n"
            + "".join(f"{key} = {value}\n" for key, value in config.items()))
        for path in self.dir.iterdir():
            path.chmod(0o644)
        self.log_path = self.dir / "pgbouncer.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([BINARY, str(self.dir / "pgbouncer.ini")], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def url(self, dbname: str) -> str:
        """A URL through this PgBouncer to database `dbname` on the server."""
        return make_conninfo("", host="127.0.0.1", port=self.port, user=self.user, dbname=dbname)

    def url_for(self, dsn: str) -> str:
        """The URL through this PgBouncer to the database `dsn` names."""
        return self.url(str(conninfo_to_dict(dsn).get("dbname") or self.user))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        dbname = next(iter(self.databases))
        if dbname == "*":
            dbname = str(conninfo_to_dict(self.server_dsn).get("dbname") or "postgres")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PgBouncerError(f"pgbouncer exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with psycopg.connect(self.url(dbname), connect_timeout=2) as conn:
                    conn.execute("select 1")
                return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.05)
        raise PgBouncerError(f"pgbouncer did not answer within {timeout:g}s ({last}):\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: immediate shutdown
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
