"""Run the host: the gRPC server on uvloop, health checking, session janitor, SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from pathlib import Path
from typing import TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from host.calls import CallsPerPeer
from host.control.runner import ControllerRunner, make_controller
from host.device import BalloonDevice, Faults
from host.limits import ConnectionWatch
from host.memory.base import MemoryBackend
from host.memory.hostmem import HostMemory
from host.memory.sim import SimBackend
from host.queue_socket import QueueSocket, share
from host.service import BalloonService
from pagehint.config import HostConfig
from pagehint.errors import UsageError
from pagehint.units import format_size
from virtqueue import codec
from virtqueue.contract import MAX_GUEST_MESSAGE_BYTES, PAGE_SIZE

log = logging.getLogger(__name__)

# A chain of 512 ranges packs to about 6 KiB: anything far bigger is refused by gRPC
# itself (RESOURCE_EXHAUSTED) before it is parsed.
MAX_MESSAGE_BYTES = MAX_GUEST_MESSAGE_BYTES
PEAK_PERIOD = 0.25  # seconds between samples of the host-wide resident peak
STOP_TASKS_SECONDS = 2.0  # the janitor and the controller, at stop


def connection_options(cfg: HostConfig) -> list[tuple[str, int]]:
    """The gRPC server's options: message size, and the caps on connections that keep
    a flood of them from taking every descriptor (checked against grpcio 1.85's C
    core: src/core/ext/transport/chttp2/server/chttp2_server.cc closes a connection
    past the cap at accept, and one without HTTP/2 settings at the handshake
    deadline; the max_age filter sends GOAWAY to an idle one)."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
        # gRPC keeps one quota per listening socket: a name that resolves to two
        # addresses (localhost: 127.0.0.1 and ::1) listens twice, so each gets its share.
        (
            "grpc.max_allowed_incoming_connections",
            max(1, connection_caps(cfg)[0] // listeners(cfg)),
        ),
        ("grpc.server_handshake_timeout_ms", max(1, round(cfg.handshake_timeout * 1000))),
        ("grpc.max_connection_idle_ms", max(1, round(cfg.idle_connection_timeout * 1000))),
    ]


def connection_caps(cfg: HostConfig) -> tuple[int, int]:
    """--max-connections as (gRPC's, the queue socket's): all of it gRPC's, or with
    --queue-socket shared (host/queue_socket.py share)."""
    return (cfg.max_connections, 0) if cfg.queue_socket is None else share(cfg.max_connections)


def listeners(cfg: HostConfig) -> int:
    """How many sockets gRPC listens on for --listen: one per address it resolves to."""
    host, _, port = cfg.listen.rpartition(":")
    host = host.strip("[]")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return 1  # an address, not a name (0.0.0.0 and [::] are one socket each)
    except OSError:
        pass
    try:
        found = socket.getaddrinfo(host or None, port or None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return 1  # binding will say what is wrong with it
    return max(1, len({info[4][:2] for info in found}))


def make_model(cfg: HostConfig) -> HostMemory | None:
    """The host's memory model (--host-memory), or None (off: the host holds what its
    guests touch)."""
    if cfg.host_memory_bytes is None:
        return None
    return HostMemory(
        cfg.host_memory_bytes // PAGE_SIZE,
        cfg.swap_bytes // PAGE_SIZE,
        cfg.swap_in_cost,
        cfg.swap_out_cost,
        -(-cfg.vmm_overhead_bytes // PAGE_SIZE),
    )


def make_backend(cfg: HostConfig) -> MemoryBackend:
    cap = None if cfg.capacity_bytes is None else cfg.capacity_bytes // PAGE_SIZE
    if cfg.backend == "sim":
        return SimBackend(cfg.discard, cap, make_model(cfg))
    if cfg.backend == "shm":
        from host.memory.shm import ShmBackend

        try:
            return ShmBackend(cfg.shm_dir, cfg.discard, cap, make_model(cfg), cfg.swap_dir)
        except OSError as e:  # e.g. a read-only --shm-dir: its pid file cannot be written
            where = cfg.shm_dir or "/dev/shm"
            raise UsageError(f"--shm-dir {where}: cannot use: {e.strerror or e}") from None
    raise UsageError(f"unknown backend {cfg.backend!r}")


class HostServer:
    def __init__(self, cfg: HostConfig) -> None:
        self.cfg = cfg
        self.backend = make_backend(cfg)
        self.device = BalloonDevice(
            self.backend,
            queue_size=cfg.queue_size,
            max_chain_ranges=cfg.max_chain_ranges,
            session_timeout=cfg.session_timeout,
            min_order=cfg.min_order,
            faults=Faults(cfg.inject_refuse, cfg.inject_discard_error, cfg.fault_seed),
            max_sessions=cfg.max_sessions,
            max_sessions_per_peer=cfg.max_sessions_per_peer,
            stats_interval=cfg.stats_interval,
            deflate_on_oom=cfg.deflate_on_oom,
            free_page_hint=cfg.free_page_hint,
        )
        self.service = BalloonService(
            self.device,
            cfg.latency,
            tls=cfg.tls is not None,
            tokens=cfg.tokens,
            auth_penalty_max=cfg.auth_penalty_max,
        )
        self.controller: ControllerRunner | None = None
        if cfg.controller is not None:
            controller, period = make_controller(cfg.controller)
            self.controller = ControllerRunner(
                self.device, controller, cfg.balloon_min_bytes, cfg.controller, period=period
            )
        self.health = HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.stopping = asyncio.Event()
        self.watch: ConnectionWatch | None = None
        self.calls = CallsPerPeer(cfg.max_calls_per_peer, self._call_refused)
        self.queue_socket: QueueSocket | None = None
        if cfg.queue_socket is not None:
            self.queue_socket = QueueSocket(
                cfg.queue_socket,
                self.service.queue,
                connection_caps(cfg)[1],
                cfg.handshake_timeout,
            )

    async def start(self) -> str:
        server = grpc.aio.server(
            options=connection_options(self.cfg),
            interceptors=[self.calls],
        )
        codec.add_servicer(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            if self.cfg.tls is not None:
                creds = self.cfg.tls.server_credentials()
                self.port = server.add_secure_port(self.cfg.listen, creds)
            else:
                self.port = server.add_insecure_port(self.cfg.listen)
        except RuntimeError:
            # gRPC's own text names its debug switches, not the problem.
            raise UsageError(
                f"--listen {self.cfg.listen}: cannot bind (address in use, not local, "
                "or not resolvable)"
            ) from None
        if self.port == 0:
            raise UsageError(
                f"--listen {self.cfg.listen}: cannot bind (address in use, not local, "
                "or not resolvable)"
            )
        await server.start()
        self.server = server
        if self.queue_socket is not None:
            await self.queue_socket.start()
        self.watch = ConnectionWatch(
            self.port,
            connection_caps(self.cfg)[0],
            self.cfg.handshake_timeout,
            self.cfg.idle_connection_timeout,
        )
        host = self.cfg.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def _call_refused(self, address: str, method: str) -> None:
        self.device.metrics.turned_away["calls_per_peer"] += 1
        self.device.problems.note(
            "turned_away:calls_per_peer",
            f"{address or 'a client'}: {method} refused: the address has "
            f"{self.cfg.max_calls_per_peer} calls open (--max-calls-per-peer)",
        )

    async def serving(self) -> None:
        """Tell health checks we serve: only once everything else is set up."""
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(codec.SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    async def janitor(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(PEAK_PERIOD)
            # The host-wide peak is sampled here, at a steady rate: guests' polls
            # ask only for their own figures, and with shm nothing else reads the
            # total (one fstat per guest) between lab polls.
            self.device.note_host_peak()
            ticks += 1
            if ticks % round(1 / PEAK_PERIOD) == 0:
                self.device.table.expire()
                await self.look_at_connections()
                self.device.problems.flush()

    async def look_at_connections(self) -> None:
        """Say (rate-limited) when connections reach their cap: gRPC turns the next
        ones away without a word. In a thread: during a flood /proc/net/tcp lists
        every socket of the namespace (100,000+ lines), and reading it on the loop
        would stall the host during the very attack it reports."""
        line = None if self.watch is None else await asyncio.to_thread(self.watch.look)
        if line is not None:
            self.device.problems.note("connections", line)

    async def stop(self) -> None:
        """Drain: stop taking new work, let in-flight chains finish, end streams, close."""
        if self.server is None:
            return
        await self.health.enter_graceful_shutdown()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.service.queue.idle.wait(), self.cfg.drain_seconds)
        # Streams waiting for their next chain hold nothing in flight: cancelling is safe.
        if self.queue_socket is not None:
            await self.queue_socket.stop()
        await self.server.stop(grace=1.0)
        for token in list(self.device.table.sessions):
            self.device.table.end(token, "host stopping")
        self.backend.close()
        self.server = None


async def serve(cfg: HostConfig, ready_file: str | None = None) -> int:
    """Run until SIGTERM/SIGINT. Everything that can fail — the backend, the port, the
    metrics port, the ready file — is set up before the host says it is ready; a
    failure is one line (UsageError) and leaves nothing behind."""
    host = HostServer(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, host.stopping.set)
    metrics = None
    try:
        if cfg.chain_log:
            host.service.queue.chain_log = _open_chain_log(cfg.chain_log)
        addr = await host.start()
        if cfg.metrics_port is not None:
            from host.metrics import start_host_metrics

            metrics = start_host_metrics(
                host.device, cfg.metrics_addr, cfg.metrics_port, host.watch, host.controller
            )
        await host.serving()
        if ready_file:
            _write_ready(ready_file, addr)
    except BaseException:
        if metrics is not None:
            metrics.shutdown()  # type: ignore[attr-defined]
        await host.stop()
        host.backend.close()
        raise
    for path in host.backend.orphans_removed:
        log.info(f"removed {path}, left behind by a host that was killed")
    log.info(_listening_line(cfg, addr))
    tasks = [asyncio.create_task(host.janitor(), name="janitor")]
    if host.controller is not None:
        tasks.append(asyncio.create_task(host.controller.run(), name="controller"))
    try:
        await host.stopping.wait()
        log.info("stopping: draining in-flight chains")
    finally:
        await _stop_tasks(host, tasks)
        await host.stop()
        if metrics is not None:
            metrics.shutdown()  # type: ignore[attr-defined]
        if ready_file:
            with contextlib.suppress(OSError):
                Path(ready_file).unlink()
        if host.service.queue.chain_log is not None:
            with contextlib.suppress(OSError):
                host.service.queue.chain_log.close()
    log.info("stopped")
    return 0


async def _stop_tasks(host: HostServer, tasks: list[asyncio.Task[None]]) -> None:
    """The janitor and the controller, cancelled and waited for (bounded: a task
    that swallowed its cancellation, as Python 3.11's wait_for can, must not hold
    the host's exit; an exception of one is the log's)."""
    if host.controller is not None:
        host.controller.stop()
    for task in tasks:
        task.cancel()
    _, late = await asyncio.wait(tasks, timeout=STOP_TASKS_SECONDS)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning(f"{task.get_name()}: {task.exception()!r}")
    for task in late:
        log.warning(f"{task.get_name()}: did not stop within {STOP_TASKS_SECONDS:g} s")


def _open_chain_log(path: str) -> TextIO:
    try:
        # Appended and line-buffered: a restarted host adds to the record, a killed
        # one leaves every finished line behind. Closed when the host stops.
        return open(path, "a", encoding="utf-8", buffering=1)
    except OSError as e:
        raise UsageError(f"--chain-log {path}: cannot write: {e.strerror}") from None


def _listening_line(cfg: HostConfig, addr: str) -> str:
    limit = "none" if cfg.capacity_bytes is None else format_size(cfg.capacity_bytes)
    who = "mutual TLS" if cfg.tls else "tokens" if cfg.tokens else "plain text"
    memory = f"memory limit {limit}"
    if cfg.host_memory_bytes is not None:
        memory = (
            f"host memory {format_size(cfg.host_memory_bytes)}, swap "
            f"{format_size(cfg.swap_bytes)}, VMM overhead {format_size(cfg.vmm_overhead_bytes)}"
        )
        if cfg.controller is not None:
            memory += f", balloon controller {cfg.controller}"
    shared = ""
    if cfg.queue_socket is not None:
        addr += f" and queue socket {cfg.queue_socket}"
        shared = f", {connection_caps(cfg)[1]} of them on the queue socket"
    return (
        f"listening on {addr} (backend {cfg.backend}, discard {cfg.discard}, "
        f"queue {cfg.queue_size}, {memory}, {who}, "
        f"at most {cfg.max_sessions} sessions, {cfg.max_sessions_per_peer} per client "
        f"address, {cfg.max_connections} connections{shared})"
    )


def _write_ready(path: str, addr: str) -> None:
    tmp = Path(path + ".tmp")
    try:
        tmp.write_text(addr + "\n")
        tmp.replace(path)
    except OSError as e:
        raise UsageError(f"--ready-file {path}: cannot write: {e.strerror}") from None
