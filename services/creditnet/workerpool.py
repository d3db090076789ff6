"""Worker processes that serve one port together: started, restarted when they die, drained.

A server run with ``--workers N`` (the node, the aggregator) binds its public
port once here with SO_REUSEPORT (:func:`reserve_port`), so that the port is
fixed and a port in use fails before anything starts, and runs N processes
that each bind it again; the kernel spreads connections over them. What the
workers are is the caller's: :class:`WorkerPool` only needs the command
line of the worker of a slot, and a worker that prints ``ready`` on stdout
once it serves (its logs go to stderr, which it shares with the pool's process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "HEALTHY_RUN",
    "MAX_RESTART_DELAY",
    "READY_TIMEOUT",
    "RESTART_DELAY",
    "Slot",
    "WorkerPool",
    "WorkerSite",
    "private_directory",
    "reserve_port",
    "watch_parent",
    "worker_argv",
    "worker_parser",
    "worker_process",
    "worker_stop",
]

log = logging.getLogger(__name__)

# A worker that does not say it serves within this long is given up on.
READY_TIMEOUT = 60.0
# Between a worker's death and its restart; doubled (up to the cap) while restarts keep failing.
RESTART_DELAY = 0.2
MAX_RESTART_DELAY = 10.0
# A worker up this long before it died is restarted at once again.
HEALTHY_RUN = 10.0
# How often a worker checks that the process that started it still runs.
PARENT_CHECK = 1.0


@dataclass
class Slot:
    """One place in the pool, and the process that fills it now."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    # Said "ready": its server serves the port.
    ready: bool = False

    @property
    def serving(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and self.ready


@dataclass
class WorkerPool:
    """N worker processes, each restarted when it dies, until the pool stops."""

    count: int
    # The command line of the worker for a slot.
    argv: Callable[[int], list[str]]
    # What the workers are, for the log ("worker", "aggregator worker").
    what: str = "worker"
    slots: list[Slot] = field(default_factory=list)
    _stopping: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Start every worker and wait until each serves; if one cannot, none stays running."""
        self.slots = [Slot(i) for i in range(self.count)]
        try:
            await asyncio.gather(*(self._spawn(s) for s in self.slots))
        except BaseException:
            await self.stop(0)
            raise
        self._tasks = [asyncio.create_task(self._supervise(s)) for s in self.slots]

    def serving(self) -> list[Slot]:
        """The slots whose worker serves now."""
        return [s for s in self.slots if s.serving]

    async def _spawn(self, slot: Slot) -> None:
        slot.starts += 1
        slot.ready = False
        proc = await asyncio.create_subprocess_exec(
            *self.argv(slot.index), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
        )
        slot.proc = proc
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RuntimeError(f"{self.what} {slot.index} did not start (exit status {proc.returncode})")
        slot.ready = True
        log.info("%s %d serving (pid %d)", self.what, slot.index, proc.pid)

    async def _supervise(self, slot: Slot) -> None:
        delay = RESTART_DELAY
        loop = asyncio.get_running_loop()
        while True:
            assert slot.proc is not None
            started = loop.time()
            status = await slot.proc.wait()
            if self._stopping:
                return
            log.warning(
                "%s %d (pid %d) exited with status %s; restarting it",
                self.what,
                slot.index,
                slot.proc.pid,
                status,
            )
            delay = (
                RESTART_DELAY if loop.time() - started > HEALTHY_RUN else min(delay * 2, MAX_RESTART_DELAY)
            )
            while not self._stopping:
                await asyncio.sleep(delay)
                try:
                    await self._spawn(slot)
                    break
                except Exception:
                    log.exception(
                        "restarting %s %d failed; trying again in %.1f s", self.what, slot.index, delay
                    )
                    delay = min(delay * 2, MAX_RESTART_DELAY)

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker (each drains its calls for up to `grace` s), then SIGKILL what remains."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)

        async def ended(p: asyncio.subprocess.Process) -> None:
            try:
                await asyncio.wait_for(p.wait(), grace + 5.0)
            except TimeoutError:
                log.warning("%s pid %d did not stop in time; killing it", self.what, p.pid)
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()

        await asyncio.gather(*(ended(p) for p in procs))
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


def reserve_port(listen: str) -> tuple[socket.socket, str]:
    """Bind `listen` with SO_REUSEPORT (not listening), so that every worker binds the same port.

    Held until the server stops: with port 0 it fixes the one port the
    workers share, and a port another program holds fails here, before any
    worker starts. Returns the socket and `listen` with the bound port.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 — as the operator's listen address says
    family, kind, proto, _, address = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        # SO_REUSEADDR as gRPC's own listeners have it: a server restarted on
        # its port binds it while the connections of the one before linger in
        # TIME_WAIT (a port another process listens on still fails).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    return sock, f"{listen.rpartition(':')[0]}:{bound}"


async def watch_parent(stop: asyncio.Event) -> None:
    """In a worker: set `stop` once the process that started it is gone (then it would serve unsupervised)."""
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(PARENT_CHECK)
        if os.getppid() != parent:
            log.error("the process that started this worker is gone; stopping")
            stop.set()


def worker_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The command line every worker takes; the caller adds its own arguments."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--grace", type=float, default=5.0, help="how long a stopping worker drains")
    parser.add_argument("--verbose", action="store_true")
    return parser


def worker_process(args: argparse.Namespace, what: str) -> None:
    """Set a worker process up: its log lines on stderr, named by slot and pid.

    Its config is the parent's effective one (the database URL with any
    password from DATABASE_PASSWORD_FILE), so the environment's DATABASE_URL
    is dropped: it must not replace it.
    """
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s {what} {args.slot} pid {os.getpid()} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.pop("DATABASE_URL", None)


def worker_stop() -> asyncio.Event:
    """In a worker's event loop: an event set by SIGTERM, or once the parent is gone.

    SIGINT (Ctrl-C goes to the whole foreground process group) is ignored:
    the parent decides when its workers stop. The parent watch runs until
    the event is set.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    watch = loop.create_task(watch_parent(stop))
    _watches.add(watch)
    watch.add_done_callback(_watches.discard)
    return stop


# The parent watches running (a task needs a reference to be kept).
_watches: set[asyncio.Task[None]] = set()


# In each private directory: the pid of the process that made it.
_OWNER = "owner.pid"


def private_directory(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A directory only this user can open (0700), under $TMPDIR, for what a server shares with its
    workers: a Unix socket, the workers' config (which may hold the database password).

    A server killed with SIGKILL cannot remove its own; so first the directories
    with this `prefix` left by processes of this user that are gone are removed.
    """
    _sweep(Path(tempfile.gettempdir()), prefix)
    private = tempfile.TemporaryDirectory(prefix=prefix)
    (Path(private.name) / _OWNER).write_text(str(os.getpid()))
    return private


def _sweep(parent: Path, prefix: str) -> None:
    uid = os.getuid()
    for path in parent.glob(f"{prefix}*"):
        try:
            if path.is_symlink() or not path.is_dir() or path.stat().st_uid != uid:
                continue
            pid = int((path / _OWNER).read_text())
        except (OSError, ValueError):
            continue  # not one of ours, or one still being made
        if not _alive(pid):
            log.info("removing %s, left by process %d that is gone", path, pid)
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, and not ours to judge
    return True


@dataclass
class WorkerSite:
    """What a server with workers holds for them: its reserved port and a private directory."""

    reservation: socket.socket
    # The listen address with the port reserved (its own port 0 made definite).
    listen: str
    private: tempfile.TemporaryDirectory[str]

    @classmethod
    def open(cls, listen: str, prefix: str) -> WorkerSite:
        reservation, bound = reserve_port(listen)
        try:
            private = private_directory(prefix)
        except BaseException:
            reservation.close()
            raise
        return cls(reservation, bound, private)

    @property
    def path(self) -> Path:
        return Path(self.private.name)

    @property
    def port(self) -> int:
        return int(self.reservation.getsockname()[1])

    def save_config(self, name: str, save: Callable[[Path], None]) -> Path:
        """The workers' config, written by `save` to `name` here, readable by this user only
        (it may hold the database password)."""
        path = self.path / name
        save(path)
        os.chmod(path, 0o600)
        return path

    def close(self) -> None:
        self.reservation.close()
        self.private.cleanup()


def worker_argv(
    module: str,
    config: Path,
    slot: int,
    *,
    metrics_port: int | None,
    grace: float,
    verbose: bool,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of the worker of `slot` (what :func:`worker_parser` reads).

    Metrics are per process: with `metrics_port` P the parent's are on P and
    worker i's on P + 1 + i (with 0, each takes any free port and logs it).
    """
    argv = [sys.executable, "-m", module, "--config", str(config), "--slot", str(slot), "--grace", str(grace)]
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port + 1 + slot if metrics_port else 0)]
    if verbose:
        argv.append("--verbose")
    return [*argv, *extra]
