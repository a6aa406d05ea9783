"""PickSharing: tell peer replicas where this one sent each prompt, learn where they sent theirs.

Replicas behind one Envoy cluster each see a share of the traffic; with an index learned from
its own picks only, each would send a shared prefix to a different engine. Each pick recorded
into the approximate index is handed to every peer, which records it as if it had decided it
(never passing it on: every replica talks to every other).

Plain asyncio TCP rather than ZeroMQ: pyzmq is an optional extra and the core must not need
it, TCP keeps picks in order and says when a peer is gone (reconnect with backoff), and a
length-prefixed frame is a dozen lines. UDP would lose long prompts' picks to fragmentation.

Routing never waits for a peer: `publish` puts the pick on a bounded queue (from any thread;
the runtime's loop does the rest) and drops it when the queue is full; a slow peer's socket
buffer is bounded the same way, and a peer down only misses picks. Every drop is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import threading
from collections.abc import Callable

import msgspec

from picker.listen import listen_socket
from picker.observe.metrics import ReplicaMetrics
from picker.replicas.settings import ReplicaSettings, host_port
from picker.replicas.wire import (
    MAX_BLOCKS,
    MAX_FRAME,
    VERSION,
    Hello,
    Pick,
    Proof,
    challenge,
    decode_hello,
    decode_pick,
    decode_proof,
    frame,
    hash_probe,
    proof_valid,
    prove,
)

__all__ = ["PickSharing"]

log = logging.getLogger("llm_picker.replicas")

_FIRST_BACKOFF_SECS = 0.1
_HEADER = 4


class _Link:
    """The connection this replica keeps open to one peer address, reconnecting with backoff;
    only ever written to (the peer's greeting aside)."""

    def __init__(self, address: tuple[str, int], sharing: PickSharing) -> None:
        self.name = f"{address[0]}:{address[1]}"
        self._address = address
        self._sharing = sharing
        self._writer: asyncio.StreamWriter | None = None
        self.is_self = False
        self._task = asyncio.create_task(self._run(), name=f"replica link {self.name}")

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def send(self, data: bytes) -> str | None:
        """None when sent (buffered), else why it was dropped."""
        writer = self._writer
        if writer is None:
            return "peer_down"
        if writer.transport.get_write_buffer_size() > self._sharing.settings.peer_buffer_bytes:
            return "peer_slow"
        writer.write(data)
        return None

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = _FIRST_BACKOFF_SECS
        settings = self._sharing.settings
        while True:
            try:
                # asyncio.timeout, not wait_for: see _read_frame (a stop() arriving as the
                # connection completed was swallowed and the link ran on, never joined).
                async with asyncio.timeout(settings.connect_timeout_secs):
                    reader, writer = await asyncio.open_connection(*self._address)
            except (OSError, TimeoutError) as exc:
                log.debug("replica %s unreachable: %s", self.name, exc)
            else:
                try:
                    if await self._greeted(reader, writer):
                        backoff = _FIRST_BACKOFF_SECS
                        self._writer = writer
                        log.info("sharing picks with replica %s", self.name)
                        # Peers never write after greeting: EOF (or an error) means gone.
                        await reader.read(1)
                        log.warning("replica %s went away; reconnecting", self.name)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                    log.warning("replica %s: %s", self.name, exc)
                finally:
                    self._writer = None
                    writer.close()
                if self.is_self:
                    return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, settings.max_backoff_secs)

    async def _greeted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read the peer's Hello and prove the secret to it, then check its proof: True to
        start sending, False if it is this replica; ValueError if it cannot be trusted."""
        timeout = self._sharing.settings.connect_timeout_secs
        hello = decode_hello(await _read_frame(reader, timeout))
        if hello.replica == self._sharing.replica_id:
            self.is_self = True
            return False
        problem = self._sharing.incompatibility(hello)
        if problem is not None:
            raise ValueError(problem)
        key, mine = self._sharing.key, challenge()
        writer.write(frame(Proof(mine, prove(key, False, hello.challenge, mine))))
        answer = decode_proof(await _read_frame(reader, timeout))
        if not proof_valid(key, answer.mac, True, hello.challenge, mine):
            raise ValueError("it failed authentication (another replicas.secret?): not "
                             "sharing picks with it")
        return True


async def _read_frame(reader: asyncio.StreamReader, timeout: float | None = None) -> bytes:
    """One frame's body; ValueError for a length over MAX_FRAME.

    asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
    arrives as the read completes (CPython bpo-42130), which left a link task cancelled by
    stop() blocked on its next read."""
    async with asyncio.timeout(timeout):
        size = int.from_bytes(await reader.readexactly(_HEADER))
        if size > MAX_FRAME:
            raise ValueError(f"frame of {size} bytes (limit {MAX_FRAME})")
        return await reader.readexactly(size)


class _Unauthenticated(Exception):
    """An inbound link that did not prove the shared secret."""


class PickSharing:
    """Built with the runtime (no I/O); `start()` listens and connects, on the runtime's loop."""

    def __init__(self, settings: ReplicaSettings, block_size: int, metrics: ReplicaMetrics,
                 apply: Callable[[Pick], bool]) -> None:
        """`apply` records a peer's pick into this replica's index; False when it names a
        worker this replica does not know (not yet discovered, or already removed)."""
        self.settings = settings
        self.key = settings.key()
        self.replica_id = secrets.randbits(62)
        self._block_size = block_size
        self._metrics = metrics
        self._apply = apply
        self._outbox: asyncio.Queue[Pick] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._links: dict[tuple[str, int], _Link] = {}
        self._server: asyncio.Server | None = None
        self._inbound: set[asyncio.StreamWriter] = set()  # closed at stop (Server.close won't)
        self._tasks: list[asyncio.Task[None]] = []
        metrics.peers_connected.set_function(lambda: sum(self.peers().values()))

    @property
    def port(self) -> int | None:
        """The bound listening port once started (for listen ports of 0)."""
        if self._server is None or not self._server.sockets:
            return None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def peers(self) -> dict[str, bool]:
        """Peer address -> connected, this replica's own address left out."""
        return {link.name: link.connected for link in self._links.values() if not link.is_self}

    def publish(self, worker: str, units: int, predicted: int, hashes: list[int],
                uncached: int) -> None:
        """Hand a pick recorded by this replica to its peers; never blocks, from any thread."""
        pick = Pick(worker, units, predicted, hashes, uncached)
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._enqueue(pick)
        else:
            loop.call_soon_threadsafe(self._enqueue, pick)

    def incompatibility(self, hello: Hello) -> str | None:
        """Why picks cannot be shared with the replica that sent `hello`, or None."""
        if hello.version != VERSION:
            return f"speaks replica protocol {hello.version}, this replica {VERSION}"
        if hello.block_size != self._block_size:
            return (f"prefix.block_size is {hello.block_size} there, {self._block_size} here: "
                    "their block hashes never match")
        if hello.hash_probe != hash_probe():
            return ("runs with another PYTHONHASHSEED: block hashes differ; give every replica "
                    "the same PYTHONHASHSEED")
        return None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._outbox = asyncio.Queue(self.settings.queue)
        sock = listen_socket(*host_port(self.settings.listen), "replicas.listen")
        self._server = await asyncio.start_server(self._serve, sock=sock)
        self._tasks.append(asyncio.create_task(self._send_forever()))
        if self.settings.dns is not None:
            self._tasks.append(asyncio.create_task(self._resolve_forever()))
        else:
            await self._follow({host_port(peer) for peer in self.settings.peers})
        log.info("replica %x shares picks on %s", self.replica_id, self.settings.listen)

    async def stop(self) -> None:
        self._loop = None  # publish() from now on drops silently: shutting down
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for link in self._links.values():
            await link.close()
        self._links.clear()
        if self._server is not None:
            self._server.close()
            for writer in self._inbound:
                writer.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def _enqueue(self, pick: Pick) -> None:
        assert self._outbox is not None
        try:
            self._outbox.put_nowait(pick)
        except asyncio.QueueFull:
            self._metrics.dropped.labels("overload").inc()

    async def _send_forever(self) -> None:
        assert self._outbox is not None
        while True:
            pick = await self._outbox.get()
            if len(pick.hashes) > MAX_BLOCKS:
                pick = msgspec.structs.replace(pick, hashes=pick.hashes[:MAX_BLOCKS])
            data = frame(pick)
            for link in list(self._links.values()):
                if link.is_self:
                    continue
                dropped = link.send(data)
                if dropped is None:
                    self._metrics.sent.labels(link.name).inc()
                else:
                    self._metrics.dropped.labels(dropped).inc()

    async def _resolve_forever(self) -> None:
        dns = self.settings.dns
        assert dns is not None and self._loop is not None
        while True:
            try:
                infos = await self._loop.getaddrinfo(dns.name, dns.port,
                                                     type=socket.SOCK_STREAM)
            except OSError as exc:  # keep the peers we have: a resolver hiccup is not a leave
                log.warning("replica peers %s: %s", dns.name, exc)
            else:
                await self._follow({(str(info[4][0]), dns.port) for info in infos})
            await asyncio.sleep(dns.interval_secs)

    async def _follow(self, addresses: set[tuple[str, int]]) -> None:
        """Open links to new addresses, close those gone."""
        for address in addresses - self._links.keys():
            self._links[address] = _Link(address, self)
        for address in self._links.keys() - addresses:
            await self._links.pop(address).close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One peer's picks, once it proved the secret, applied in order until it disconnects
        or sends garbage."""
        self._inbound.add(writer)
        try:
            await self._authenticate(reader, writer)
            while True:
                pick = decode_pick(await _read_frame(reader))
                self._metrics.received.inc()
                if not self._apply(pick):
                    self._metrics.dropped.labels("unknown_worker").inc()
        except asyncio.IncompleteReadError:
            pass  # the peer closed (or is this replica's own link, greeted and gone)
        except _Unauthenticated as exc:
            self._metrics.refused.inc()
            log.warning("replica link from %s refused: %s", writer.get_extra_info("peername"),
                        exc)
        except ValueError as exc:  # msgspec's DecodeError and ValidationError among them
            self._metrics.dropped.labels("invalid").inc()
            log.warning("replica link from %s closed: %s",
                        writer.get_extra_info("peername"), exc)
        except OSError:
            pass
        finally:
            self._inbound.discard(writer)
            writer.close()

    async def _authenticate(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        """Greet with a fresh challenge, check the connector's proof, answer with ours;
        _Unauthenticated (its text never holds the secret) if the proof is missing or wrong."""
        mine = challenge()
        writer.write(frame(Hello(VERSION, self.replica_id, self._block_size, hash_probe(), mine)))
        try:
            proof = decode_proof(await _read_frame(reader, self.settings.connect_timeout_secs))
        except TimeoutError as exc:
            raise _Unauthenticated("no proof of replicas.secret within "
                                   f"{self.settings.connect_timeout_secs} s") from exc
        except ValueError as exc:
            raise _Unauthenticated(f"its first frame is not a proof ({exc})") from exc
        if len(proof.challenge) != len(mine) \
                or not proof_valid(self.key, proof.mac, False, mine, proof.challenge):
            raise _Unauthenticated("wrong proof of replicas.secret")
        writer.write(frame(Proof(b"", prove(self.key, True, mine, proof.challenge))))
