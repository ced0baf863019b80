"""Shared pieces of the controller benchmarks: a private attune-server (own port, database,
controller id and events queue, so tests and the demo server on :8080 are never disturbed),
HTTP and SQL helpers, the baselines, and percentiles.

Only loopback traffic. Every server started here is stopped (SIGTERM, so warm pools are
retired), every container carrying its controller id is removed, and its database and events
queue are dropped, also when a benchmark fails.
"""
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SERVER_BINARY = os.path.join(REPO_ROOT, "target", "release", "attune-server")
CLI_BINARY = os.path.join(REPO_ROOT, "target", "release", "attune")
AGENT_BINARY = os.path.join(REPO_ROOT, "agent-dist", "attune-agent-x86_64")
PACKS_DIR = os.path.join(REPO_ROOT, "scripts", "bench", "packs")
POSTGRES_ADMIN_URL = os.environ.get(
    "ATTUNE_TEST_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres")
MESSAGE_QUEUE_URL = os.environ.get("ATTUNE_TEST_MQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
TERMINAL = ("succeeded", "failed", "timeout", "canceled", "abandoned")


def percentile(values, fraction):
    """Nearest-rank percentile of `values` (fraction in 0..1)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def database_url(name):
    base = POSTGRES_ADMIN_URL.split("?")[0]
    return base[: base.rfind("/")] + "/" + name


def psql(url, sql):
    """Runs SQL with psql; returns stdout rows as lists of `|`-separated fields."""
    completed = subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-qtAX", "-c", sql],
        check=True, capture_output=True, text=True)
    return [line.split("|") for line in completed.stdout.splitlines() if line]


def request(method, url, body=None, timeout=60, token=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.loads(response.read())


def docker_ids(*filters):
    arguments = ["docker", "ps", "-aq"]
    for item in filters:
        arguments += ["--filter", item]
    completed = subprocess.run(arguments, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)}: {completed.stderr.strip()}")
    return completed.stdout.split()


def remove_containers(*filters):
    """Removes matching containers one at a time. Never `docker rm -f` many at once: the CLI
    removes them in parallel, and many host-network containers exiting together can deadlock
    Docker 20.10's libnetwork (moby/moby#46661, fixed by moby/libnetwork#2679 after 20.10.24)."""
    ids = docker_ids(*filters)
    for container_id in ids:
        subprocess.run(["docker", "rm", "-f", container_id], check=False, capture_output=True)
    return len(ids)


def read_status_kib(pid, field):
    """A number from `/proc/<pid>/status`: VmRSS, RssAnon, VmHWM ... in KiB, or Threads."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


class Build:
    """The release binaries of one checkout: `root`/target/release/{attune-server,attune} and
    `root`/agent-dist/attune-agent-x86_64 (what scripts/bench/prepare.sh builds in this tree)."""

    def __init__(self, root, target_dir=None):
        self.root = os.path.abspath(root)
        target = target_dir or os.path.join(self.root, "target")
        self.server_binary = os.path.join(target, "release", "attune-server")
        self.cli_binary = os.path.join(target, "release", "attune")
        self.agent_binary = os.path.join(self.root, "agent-dist", "attune-agent-x86_64")


class BenchServer:
    """A release attune-server of its own. Use as a context manager.

    `settings` adds ATTUNE__... variables; `name` shows up in the controller id and the log file;
    `database_settings` are Postgres settings for its database only (diagnostics).
    `build` picks the binaries: None for this tree's (target/release, agent-dist), or a
    `Build` of another checkout (e.g. a git worktree of an older commit, for before/after runs).
    """

    def __init__(self, name, settings=None, rust_log=None, docker_host=None,
                 database_settings=None, command_prefix=None, build=None):
        unique = uuid.uuid4().hex[:10]
        self.name = name
        self.build = build or Build(REPO_ROOT)
        self.controller_id = f"bench-{name}-{unique}"
        self.database = f"attune_bench_{unique}"
        self.database_url = database_url(self.database)
        self.events_queue = f"attune.bench.{unique}.events"
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.settings = dict(settings or {})
        self.rust_log = rust_log
        self.docker_host = docker_host
        # Postgres settings for this database only (ALTER DATABASE ... SET), for diagnostics.
        self.database_settings = dict(database_settings or {})
        # A profiler to run the server under (heaptrack, perf record ...), for diagnostics.
        self.command_prefix = list(command_prefix or [])
        self.log_dir = tempfile.mkdtemp(prefix=f"attune-bench-{name}-")
        self.log_path = os.path.join(self.log_dir, "server.log")
        # The first start writes its admin token here (a build older than API tokens does not).
        self.token_path = os.path.join(self.log_dir, "admin-token")
        self.token = None
        self.process = None

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def start(self):
        build = self.build
        for binary in (build.server_binary, build.cli_binary, build.agent_binary):
            if not os.path.exists(binary):
                raise SystemExit(f"missing {binary}: run the benchmark's .sh wrapper (it builds)")
        self.record("controller", self.controller_id)
        self.record("database", self.database)
        self.record("queue", self.events_queue)
        psql(POSTGRES_ADMIN_URL, f"CREATE DATABASE {self.database}")
        for key, value in self.database_settings.items():
            psql(POSTGRES_ADMIN_URL, f"ALTER DATABASE {self.database} SET {key} = '{value}'")
        environment = dict(os.environ)
        environment.update({
            "ATTUNE__DATABASE__URL": self.database_url,
            "ATTUNE__MESSAGE_QUEUE__URL": MESSAGE_QUEUE_URL,
            "ATTUNE__MESSAGE_QUEUE__EVENTS_QUEUE": self.events_queue,
            "ATTUNE__EXECUTOR__CONTROLLER_ID": self.controller_id,
            "ATTUNE__DOCKER__NETWORK": "host",
            "ATTUNE__SERVER__ADMIN_TOKEN_FILE": self.token_path,
            "ATTUNE__SERVER__SECRETS_KEY_FILE": os.path.join(self.log_dir, "secrets-key"),
        })
        docker_host = self.docker_host or os.environ.get("DOCKER_HOST")
        if docker_host:
            environment["ATTUNE__DOCKER__HOST"] = docker_host
        environment.update(self.settings)
        environment.pop("RUST_LOG", None)
        if self.rust_log:
            environment["RUST_LOG"] = self.rust_log
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                self.command_prefix + [build.server_binary, "--bind", f"127.0.0.1:{self.port}",
                                       "--agent-binary", build.agent_binary],
                stdout=log_file, stderr=subprocess.STDOUT, env=environment, cwd=build.root)
        self.record("pid", str(self.process.pid))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"attune-server {self.name} exited at start; log: {self.tail()}")
            try:
                if request("GET", f"{self.api}/readyz", timeout=2).get("status") == "ready":
                    if os.path.exists(self.token_path):
                        with open(self.token_path) as token_file:
                            self.token = token_file.read().strip()
                    log(f"server {self.name} ready on {self.api} (pid {self.process.pid}, "
                        f"controller {self.controller_id}, log {self.log_path})")
                    return
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            time.sleep(0.1)
        raise SystemExit(f"attune-server {self.name} not ready within 60 s; log: {self.tail()}")

    @staticmethod
    def record(kind, value):
        """Appends `kind value` to $ATTUNE_BENCH_STATE_FILE when set, so a wrapper script can
        clean up after this process if it dies without running its own cleanup."""
        path = os.environ.get("ATTUNE_BENCH_STATE_FILE")
        if path:
            with open(path, "a") as state:
                state.write(f"{kind} {value}\n")

    def tail(self, lines=20):
        try:
            with open(self.log_path, errors="replace") as log_file:
                return "".join(log_file.readlines()[-lines:])
        except OSError:
            return ""

    def register_pack(self, directory):
        environment = dict(os.environ, ATTUNE_API_URL=self.api)
        if self.token:
            environment["ATTUNE_API_TOKEN"] = self.token
        subprocess.run([self.build.cli_binary, "pack", "register", os.path.join(PACKS_DIR, directory),
                        "--force"], check=True, env=environment, stdout=subprocess.DEVNULL)

    def submit(self, action, parameters=None):
        return request("POST", f"{self.api}/api/v1/executions",
                       {"action": action, "parameters": parameters or {}}, token=self.token)["id"]

    def get(self, execution_id):
        return request("GET", f"{self.api}/api/v1/executions/{execution_id}", token=self.token)

    def wait_terminal(self, execution_id, poll_seconds, deadline_seconds=120):
        """Polls until terminal; returns the execution. Raises when it did not succeed."""
        deadline = time.monotonic() + deadline_seconds
        while True:
            execution = self.get(execution_id)
            if execution["status"] in TERMINAL:
                if execution["status"] != "succeeded":
                    raise SystemExit(f"execution {execution_id} on {self.name} ended "
                                     f"{execution['status']}: {execution.get('error')}")
                return execution
            if time.monotonic() > deadline:
                raise SystemExit(f"execution {execution_id} on {self.name} not terminal after "
                                 f"{deadline_seconds} s (status {execution['status']})")
            if poll_seconds:
                time.sleep(poll_seconds)

    def pools(self):
        return request("GET", f"{self.api}/api/v1/pools", token=self.token)["items"]

    def sql(self, statement):
        return psql(self.database_url, statement)

    def step_times(self, execution_id):
        """Microsecond timestamps of one execution from the database, in seconds since epoch:
        (requested, scheduled, started, finished)."""
        row = self.sql(
            "SELECT extract(epoch FROM requested_at), extract(epoch FROM scheduled_at), "
            "extract(epoch FROM started_at), extract(epoch FROM finished_at) "
            f"FROM executions WHERE id = {int(execution_id)}")[0]
        return tuple(float(value) for value in row)

    def rss_kib(self, field="VmRSS"):
        return read_status_kib(self.process.pid, field)

    def stop(self, timeout_seconds=600):
        """SIGTERM, then wait for the drain (it retires idle warm containers)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            log(f"server {self.name} did not stop within {timeout_seconds} s; killing it")
            self.process.kill()
            self.process.wait()

    def close(self):
        """Stops the server and removes what it leaves; every step runs even if one fails."""
        self.stop()
        removed = None
        for attempt in range(1, 31):
            try:
                removed = remove_containers(f"label=attune.controller={self.controller_id}")
                break
            except RuntimeError as error:
                # The engine may be restarting (someone ran scripts/setup-host.sh).
                log(f"remove containers of {self.controller_id}, attempt {attempt}: {error}")
                time.sleep(2)
        if removed:
            log(f"removed {removed} container(s) left by {self.controller_id} after its stop")
        try:
            psql(POSTGRES_ADMIN_URL, f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
        except subprocess.CalledProcessError as error:
            log(f"drop database {self.database}: {error.stderr.strip()}")
        if shutil.which("rabbitmqctl"):
            # The events queue and the dead-letter queue declared beside it.
            for queue in (self.events_queue, f"{self.events_queue}.dead"):
                subprocess.run(["rabbitmqctl", "delete_queue", queue],
                               check=False, capture_output=True)
        # The events exchange (named like the queue) and any broker account of its agents
        # left behind (a server stopped cleanly removes its agents' own).
        management("DELETE", f"/api/exchanges/%2F/{urllib.parse.quote(self.events_queue)}")
        for user in management("GET", "/api/users?columns=name") or []:
            if user.get("name", "").startswith(f"attune-agent.{self.controller_id}."):
                management("DELETE", f"/api/users/{urllib.parse.quote(user['name'])}")


MANAGEMENT_URL = os.environ.get("ATTUNE_TEST_MANAGEMENT_URL", "http://127.0.0.1:15672")


def management(method, path):
    """A call to RabbitMQ's management API as guest (loopback only); None when it fails."""
    import base64
    request_ = urllib.request.Request(f"{MANAGEMENT_URL}{path}", method=method)
    request_.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    try:
        with urllib.request.urlopen(request_, timeout=10) as response:
            body = response.read()
            return json.loads(body) if body else {}
    except (urllib.error.URLError, ConnectionError, OSError, ValueError):
        return None


def docker_run_once(image, label):
    """The cold baseline: `docker run --rm --network host IMAGE sh -c 'echo hi'`."""
    started = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", "--network", "host", "--label", label, image,
                    "sh", "-c", "echo hi"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def spawn_once():
    """The warm baseline: a bare `sh -c 'echo hi'` on the host, output read like the agent does."""
    started = time.perf_counter()
    subprocess.run(["sh", "-c", "echo hi"], check=True, stdout=subprocess.PIPE)
    return time.perf_counter() - started


class UnixHttpConnection(http.client.HTTPConnection):
    """HTTP over a unix socket."""

    def __init__(self, socket_path):
        super().__init__("localhost", timeout=30)
        self.socket_path = socket_path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.socket_path)


def docker_socket_path():
    """The engine's unix socket: DOCKER_HOST when it names one, else the default."""
    host = os.environ.get("DOCKER_HOST", "")
    return host[len("unix://"):] if host.startswith("unix://") else "/var/run/docker.sock"


class DockerApi:
    """Minimal client of the engine's unix socket, for cheap polling (no docker CLI spawn)."""

    def __init__(self, path=None):
        self.path = path or docker_socket_path()

    def get(self, url_path):
        connection = UnixHttpConnection(self.path)
        try:
            connection.request("GET", url_path)
            response = connection.getresponse()
            return json.loads(response.read())
        finally:
            connection.close()

    def container_ids(self, *labels):
        filters = urllib.parse.quote(json.dumps({"label": list(labels)}))
        return [item["Id"] for item in self.get(f"/containers/json?all=1&filters={filters}")]

    def wait_gone(self, *labels, deadline_seconds=60, poll_seconds=0.005):
        """Waits until no container carries all `labels`; returns when that was seen."""
        deadline = time.monotonic() + deadline_seconds
        while self.container_ids(*labels):
            if time.monotonic() > deadline:
                raise SystemExit(f"containers with labels {labels} still exist after "
                                 f"{deadline_seconds} s")
            time.sleep(poll_seconds)
        return time.perf_counter()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Which component a process belongs to, by its command name (or its user for Postgres).
COMPONENTS = (
    ("attune-server", lambda comm, user: comm == "attune-server"),
    ("agents + their sh (in containers)", lambda comm, user: comm == "attune-agent"),
    ("postgres", lambda comm, user: user == "postgres"),
    ("rabbitmq", lambda comm, user: user == "rabbitmq"),
    ("docker (dockerd, containerd, shims)",
     lambda comm, user: comm in ("dockerd", "containerd") or comm.startswith("containerd-shim")),
)


def cpu_by_component():
    """CPU seconds used so far per component (user + system, plus reaped children, which
    is how the short-lived `sh` of an action is counted for its agent), and the whole
    machine's busy seconds from /proc/stat."""
    totals = {name: 0.0 for name, _ in COMPONENTS}
    users = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat_file:
                stat = stat_file.read()
            uid = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
        if uid not in users:
            try:
                users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                users[uid] = str(uid)
        for name, belongs in COMPONENTS:
            if belongs(comm, users[uid]):
                totals[name] += ticks / CLOCK_TICKS
                break
    with open("/proc/stat") as stat_file:
        cpu = [int(value) for value in stat_file.readline().split()[1:]]
    idle = cpu[3] + cpu[4]
    totals["machine busy"] = (sum(cpu[:8]) - idle) / CLOCK_TICKS
    return totals


def cpu_delta(before, after):
    return {name: after[name] - before.get(name, 0.0) for name in after}


def load_average():
    """The 1-minute load average (other people's builds show up here)."""
    with open("/proc/loadavg") as loadavg:
        return float(loadavg.read().split()[0])
