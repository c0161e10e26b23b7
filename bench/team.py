"""Throwaway pieces of a team deployment for the benchmarks, all on 127.0.0.1:

* `TempPostgres`: a PostgreSQL cluster from Debian's package (initdb in a temp folder, loopback TCP
  and a unix socket there, durable defaults: fsync and synchronous_commit on). We run as root here
  and in CI and postgres refuses root, so initdb and the server run as the `postgres` user, the
  folder chowned to it.
* `Haproxy`: /usr/sbin/haproxy in the foreground with deploy/team/haproxy.cfg rendered for the
  given ports, plus a stats listener whose CSV gives the requests each server answered.
* `Ferrolabel`: one `ferrolabel start_server` (the release binary, no model), on SQLite or on a
  `--datastore-url`, with the studies and session folders given.
"""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.environ.get("FERROLABEL_BIN", os.path.join(REPO, "target", "release", "ferrolabel"))
TEAM_CFG = os.path.join(REPO, "deploy", "team", "haproxy.cfg")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir():
    """The newest /usr/lib/postgresql/<major>/bin (or FERROLABEL_PG_BIN)."""
    env = os.environ.get("FERROLABEL_PG_BIN")
    if env:
        return env
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("no PostgreSQL server: apt-get install postgresql (scripts/setup-system.sh)")
    return os.path.dirname(found[-1])


def wait_http(url, proc, log_path, timeout=300):
    """Polls `url` until it answers 200; raises with the log's tail if `proc` exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}): {open(log_path, errors='replace').read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:  # noqa: BLE001  (not up yet)
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def stop_proc(proc, timeout=30):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class TempPostgres:
    """A throwaway PostgreSQL cluster; `url(db)` gives a connection URL, `create_db(name)` a database."""

    def __init__(self, max_connections=200):
        self.bindir = pg_bindir()
        self.dir = tempfile.mkdtemp(prefix="ferrolabel-bench-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        run_as = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            run_as = "postgres"
        self.user = run_as
        self.log_path = os.path.join(self.dir, "postgres.log")
        subprocess.run([os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--locale=C"], check=True, capture_output=True, user=run_as)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [os.path.join(self.bindir, "postgres"), "-D", self.data, "-p", str(self.port), "-k", self.dir,
             "-h", "127.0.0.1", "-c", f"max_connections={max_connections}"],
            stdout=self.log, stderr=subprocess.STDOUT, user=run_as)
        deadline = time.time() + 60
        while subprocess.run([os.path.join(self.bindir, "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"postgres did not start: {open(self.log_path, errors='replace').read()[-2000:]}")
            time.sleep(0.1)

    def version(self):
        return self.psql("postgres", "SHOW server_version").strip()

    def psql(self, db, sql):
        r = subprocess.run([os.path.join(self.bindir, "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
                           check=True, capture_output=True, text=True)
        return r.stdout

    def create_db(self, name):
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, db):
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self):
        stop_proc(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Haproxy:
    """haproxy in front of `ports`: deploy/team/haproxy.cfg (the shipped config, round robin) with
    its `bind` on a loopback port and its `server` lines replaced by ours, plus a stats listener.
    Ready when the stats page answers and (`wait_info`) `/info/` answers 200 through it."""

    def __init__(self, ports, workdir, wait_info=True):
        self.port = free_port()
        self.stats_port = free_port()
        servers = [f"    server s{i} 127.0.0.1:{p}" for i, p in enumerate(ports, 1)]
        with open(TEAM_CFG) as f:
            lines = f.read().splitlines()
        out, placed = [], False
        for line in lines:
            word = line.split()[0] if line.split() else ""
            if line[:1].isspace() and word == "bind":
                out.append(f"    bind 127.0.0.1:{self.port}")
            elif line[:1].isspace() and word == "server":
                if not placed:
                    out += servers
                    placed = True
            else:
                out.append(line)
        assert placed, f"no server lines in {TEAM_CFG}"
        out += ["", "listen stats", f"    bind 127.0.0.1:{self.stats_port}", "    stats enable", "    stats uri /stats"]
        self.cfg = os.path.join(workdir, "haproxy.cfg")
        with open(self.cfg, "w") as f:
            f.write("\n".join(out) + "\n")
        self.log_path = os.path.join(workdir, "haproxy.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([os.environ.get("FERROLABEL_HAPROXY", "/usr/sbin/haproxy"), "-db", "-f", self.cfg],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{self.stats_port}/stats", self.proc, self.log_path, timeout=30)
        # with authentication on /info/ answers 401: the caller has waited for its servers
        if wait_info:
            wait_http(f"http://127.0.0.1:{self.port}/info/", self.proc, self.log_path, timeout=30)

    def served(self):
        """Requests each backend server has answered so far: {"s1": n, ...} (from the stats CSV)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=10) as r:
            lines = r.read().decode().splitlines()
        head = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(head, line.split(",")))
            if row.get("svname", "") in {f"s{i}" for i in range(1, 100)}:
                out[row["svname"]] = int(row.get("stot") or 0)
        return out

    def stop(self):
        stop_proc(self.proc)
        self.log.close()


class Ferrolabel:
    """One `ferrolabel start_server` without a model; `ready_s` is spawn-to-first-200 of /info/."""

    def __init__(self, studies, sessions, log_path, datastore_url=None, workers=2, extra=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [BIN, "start_server", "--app", os.path.join(REPO, "apps", "wholebody"), "--studies", studies,
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers), *extra]
        if datastore_url:
            cmd += ["--datastore-url", datastore_url]
        env = dict(os.environ, MONAI_LABEL_SESSION_PATH=sessions)
        env.pop("FERROLABEL_DATASTORE_URL", None)
        self.log_path = log_path
        self.log = open(log_path, "ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_http(self.url + "/info/", self.proc, log_path, timeout=1800)
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.perf_counter() - t0

    def stop(self):
        stop_proc(self.proc)
        self.log.close()


def supports(flag):
    """Whether this ferrolabel binary's start_server knows `flag`."""
    r = subprocess.run([BIN, "start_server", "--help"], capture_output=True, text=True)
    return flag in r.stdout
