"""A team's tracking setup on 127.0.0.1, for the integration tests and the scaling benchmark: a
PostgreSQL server from Debian's packages and an ``mlflow server`` on it with proxied artifacts
(optionally behind MLflow's basic-auth app).

Both start in a temporary folder and stop when their block ends, however it ends. ``mlflow server``
binds port 0 and says which port it got; PostgreSQL cannot (its port must be 1 or more), so it
starts on a port free a moment before and, should another process take that port meanwhile, on
another. PostgreSQL runs as the ``postgres`` user when started by root (``initdb`` refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from bench.localserver import free_port, running, venv_tool

#: Ports PostgreSQL is tried on before giving up: one is taken only by a rare race.
PG_PORT_TRIES = 5
#: Seconds ``pg_ctl`` waits for the server (its default, 60, is short on a loaded machine).
PG_WAIT = 300

#: The SQLAlchemy driver dfk depends on for PostgreSQL (the ``team`` extra): psycopg 3, also
#: SQLAlchemy 2.1's default for ``postgresql://``.
DRIVER = "postgresql+psycopg"


def postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, else Debian's ``/usr/lib/postgresql/N/bin``."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


@dataclass
class Postgres:
    host: str
    port: int
    user: str
    password: str

    def url(self, database: str, driver: str = DRIVER) -> str:
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name``; its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster on 127.0.0.1 with a password-protected superuser ``dfk``."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="dfk-pg-"))
    root.chmod(0o755)
    data, password = root / "data", secrets.token_urlsafe(12)
    data.mkdir()
    (root / "pw").write_text(password)
    if as_postgres:
        shutil.chown(data, "postgres")
        shutil.chown(root / "pw", "postgres")
    pg_ctl = [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-t", str(PG_WAIT)]
    try:
        subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "dfk", "-A", "scram-sha-256",
                        f"--pwfile={root / 'pw'}", "--no-sync"], check=True, capture_output=True)
        log = data / "server.log"
        for _ in range(PG_PORT_TRIES):
            port, seen = free_port(), log.stat().st_size if log.exists() else 0
            started = subprocess.run([*pg_ctl, "-l", str(log), "-w", "-o",
                                      f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                                     capture_output=True, text=True, check=False)
            if started.returncode == 0:
                break
            said = log.read_bytes()[seen:].decode(errors="replace") if log.exists() else ""  # this try's lines
            if "could not bind" not in said and "Address already in use" not in said:
                raise RuntimeError(f"PostgreSQL did not start: {started.stderr[-2000:]}{said[-2000:]}")
        else:
            raise RuntimeError(f"PostgreSQL found no free port in {PG_PORT_TRIES} tries")
        try:
            yield Postgres("127.0.0.1", port, "dfk", password)
        finally:
            subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class TrackingServer:
    uri: str
    artifacts: Path  # where the server keeps artifacts (clients see mlflow-artifacts:/ URIs)
    admin: tuple[str, str] | None = None  # basic-auth admin user and password


#: How ``mlflow server`` serves: its default, uvicorn, and gunicorn (``--gunicorn-opts``), which
#: answered a kept-alive client's calls in a tenth of the time here (docs/BENCHMARKS.md, scaling).
UVICORN = ("--workers", "2")
GUNICORN = ("--workers", "2", "--gunicorn-opts", "--timeout 120")


@contextlib.contextmanager
def mlflow_server(backend_uri: str, folder: Path, basic_auth: bool = False,
                  options: Sequence[str] = GUNICORN) -> Iterator[TrackingServer]:
    """``mlflow server`` on ``backend_uri`` with proxied artifacts in ``folder/artifacts``; with
    ``basic_auth``, MLflow's basic-auth app, its users in ``folder/auth.db`` and an admin whose
    password comes from the environment (``MLFLOW_AUTH_ADMIN_PASSWORD``). ``options``: how it serves
    (workers; ``--gunicorn-opts`` for gunicorn instead of uvicorn)."""
    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    cmd = [venv_tool("mlflow"), "server", "--backend-store-uri", backend_uri, "--artifacts-destination",
           str(artifacts), "--host", "127.0.0.1", "--port", "0", *options]  # the port it binds, read back
    admin = None
    if basic_auth:
        ini = folder / "basic_auth.ini"
        # auth_cache_ttl_seconds: a worker checks a user's password hash (~0.4 s of CPU here) once a
        # minute, not on every request; logging one model is ~100 requests. Wrong passwords are
        # never cached.
        ini.write_text("[mlflow]\ndefault_permission = READ\n"
                       f"database_uri = sqlite:///{folder / 'auth.db'}\nadmin_username = admin\n"
                       "auth_cache_ttl_seconds = 60\n")
        admin = ("admin", secrets.token_urlsafe(12))
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=admin[1],
                   MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
        cmd += ["--app-name", "basic-auth"]
    with running(cmd, "/health", env=env, cwd=folder, timeout=600) as proc:
        yield TrackingServer(proc.url, artifacts, admin)


if __name__ == "__main__":  # pragma: no cover - by hand: a server to try the team setup against
    with postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        with mlflow_server(pg.create_database("mlflow"), Path(tmp)) as server:
            print(f"MLFLOW_TRACKING_URI={server.uri}\nDFK_OPTUNA_STORAGE={pg.create_database('optuna')}", flush=True)
            try:
                sys.stdin.read()
            except KeyboardInterrupt:
                pass
