"""`lab probe`: TCP and UDP from every pod of a lab to every pod on the given ports, as
truth tables, and with `expect` what the lab's NetworkPolicies allow, by the oracle.

One process does it all, with nothing exec'd. A socket stays in the network namespace it
was made in, so the servers are sockets made inside each pod's namespace (TCP listening,
UDP echoing) and served by one thread, and each probe makes its client socket inside the
source pod's namespace from a pool thread. Every socket and thread ends with `run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gingham.dataplane import netns
from gingham.lab import control, procs
from gingham.lab.probe_matrix import Cell, Difference, cells, differences, expected
from gingham.lab.state import LabRecord, PodRecord
from gingham.policy.evaluate import PodView, Verdict
from gingham.policy.picture import read_picture

TIMEOUT = 1.0  # one probe's budget: a TCP handshake or a UDP echo, over its attempts
ATTEMPTS = 2  # one lost packet, or a route still on its way, is not a block
SLOT = TIMEOUT / ATTEMPTS
# Enough to run all 324 probes of 9 pods x 2 ports x 2 protocols at once, so a matrix of
# timeouts still takes about one TIMEOUT.
MAX_WORKERS = 400
POLL = 0.1  # how soon the server thread notices it should stop
KINDS = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
# Clients close TCP with a reset, so no TIME_WAIT stays in the pods: it would make a later
# bind of the port without SO_REUSEADDR fail.
ABORT = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class Result:
    pods: list[str]
    ports: Sequence[int]
    protocols: Sequence[str]
    got: dict[Cell, bool]
    expected: dict[Cell, Verdict] | None
    problems: list[str] = field(default_factory=list)

    @property
    def differences(self) -> list[Difference]:
        return [] if self.expected is None else differences(self.expected, self.got)


def run(record: LabRecord, ports: Sequence[int], protocols: Sequence[str],
        expect: bool = False) -> Result:
    pods = sorted((p for p in record.pods.values() if p.ip), key=lambda p: p.ref)
    problems = [f"pod {p.ref} has no IP: not probed" for p in record.pods.values() if not p.ip]
    if not pods:
        raise LookupError(f"lab {record.name} has no pods to probe")
    want = None
    if expect:  # read before probing: a datastore that does not answer fails fast
        want, found = expectations(record, pods, ports, protocols)
        problems += found
    got = probe_all(pods, ports, protocols)
    return Result([p.ref for p in pods], ports, protocols, got, want, problems)


# -- what gets through ---------------------------------------------------------------


def _socket_in(ns: str, protocol: str) -> socket.socket:
    with netns.entered(procs.netns_path(ns)):
        return socket.socket(socket.AF_INET, KINDS[protocol])


@contextlib.contextmanager
def serving(pods: Sequence[PodRecord], ports: Sequence[int], protocols: Sequence[str]
            ) -> Iterator[None]:
    """A server on each port and protocol in each pod, until the body ends."""
    stop = threading.Event()
    with selectors.DefaultSelector() as selector, contextlib.ExitStack() as sockets:
        for pod in pods:
            for port in ports:
                for protocol in protocols:
                    sock = sockets.enter_context(_socket_in(pod.netns, protocol))
                    try:
                        # An earlier run's connections in TIME_WAIT must not block the port.
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        sock.bind(("0.0.0.0", port))
                        if protocol == "tcp":
                            sock.listen(128)
                    except OSError as err:
                        raise OSError(f"pod {pod.ref} cannot serve {port}/{protocol}: "
                                      f"{err.strerror}") from None
                    sock.setblocking(False)
                    selector.register(sock, selectors.EVENT_READ, protocol)
        thread = threading.Thread(target=_serve, args=(selector, stop), daemon=True,
                                  name="probe-servers")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _serve(selector: selectors.BaseSelector, stop: threading.Event) -> None:
    while not stop.is_set():
        for key, _ in selector.select(POLL):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                if key.data == "tcp":
                    conn, _ = sock.accept()
                    conn.setblocking(False)
                    selector.register(conn, selectors.EVENT_READ, "conn")
                elif key.data == "conn":
                    # The client ends each connection, with a reset: a server closing
                    # first would leave TIME_WAIT behind, or with a reset of its own make
                    # a client that had not yet looked at its connect see it fail.
                    selector.unregister(sock)
                    sock.close()
                else:
                    data, peer = sock.recvfrom(2048)
                    sock.sendto(data, peer)
            except OSError:
                pass  # a peer gone meanwhile: its probe says so
    for key in list(selector.get_map().values()):
        if key.data == "conn":
            key.fileobj.close()  # type: ignore[union-attr]


def probe(source: PodRecord, target: PodRecord, port: int, protocol: str) -> bool:
    """Whether `protocol` traffic from `source` reaches `target`'s server on `port` and back,
    in one of ATTEMPTS tries. Only a completed exchange counts: a refused TCP connect
    reached the pod, but no server answered, so it is not a reachable server either."""
    for attempt in range(ATTEMPTS):
        started = time.monotonic()
        if _attempt(source, target, port, protocol):
            return True
        if attempt + 1 < ATTEMPTS:
            # A fast failure (no route yet: unreachable) waits out its slot, so a route
            # just being programmed still has the whole TIMEOUT to arrive.
            time.sleep(max(0.0, started + SLOT - time.monotonic()))
    return False


def _attempt(source: PodRecord, target: PodRecord, port: int, protocol: str) -> bool:
    try:
        sock = _socket_in(source.netns, protocol)
    except OSError:
        return False  # the source's namespace is gone: nothing leaves it
    with sock:
        sock.settimeout(SLOT)
        try:
            if protocol == "tcp":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
                sock.connect((target.ip, port))
                return True
            token = secrets.token_bytes(16)
            sock.connect((target.ip, port))  # only its replies arrive; ICMP errors raise
            sock.send(token)
            while sock.recv(64) != token:
                pass
            return True
        except OSError:  # timed out, refused, unreachable
            return False


def probe_all(pods: Sequence[PodRecord], ports: Sequence[int], protocols: Sequence[str]
              ) -> dict[Cell, bool]:
    by_ref = {p.ref: p for p in pods}
    todo = cells(list(by_ref), ports, protocols)
    with serving(pods, ports, protocols), \
            ThreadPoolExecutor(max_workers=min(len(todo), MAX_WORKERS)) as pool:
        results = list(pool.map(lambda c: probe(by_ref[c.source], by_ref[c.target], c.port,
                                                c.protocol), todo))
    return dict(zip(todo, results, strict=True))


# -- what should get through ---------------------------------------------------------


def expectations(record: LabRecord, pods: Sequence[PodRecord], ports: Sequence[int],
                 protocols: Sequence[str]) -> tuple[dict[Cell, Verdict], list[str]]:
    """The oracle's verdict for every cell, from the pods, namespaces, nodes and policies
    in the lab's datastore."""
    with control.lab_registry(record) as registry:
        picture = read_picture(registry.store, registry.prefix)
    problems = list(picture.problems)
    by_ref = {p.ref: p for p in picture.pods}
    views = []
    for pod in pods:
        if pod.ref in by_ref:  # its IP as probed, the rest as the API server holds it
            views.append(dataclasses.replace(by_ref[pod.ref], ip=pod.ip))
        else:
            problems.append(f"pod {pod.ref} is not in the datastore: expected with the "
                            "lab's record of its labels")
            views.append(PodView(pod.namespace, pod.name, pod.ip, dict(pod.labels),
                                 node=pod.node))
    return expected(views, ports, protocols, namespaces=picture.namespaces,
                    policies=picture.policies, node_ips=picture.node_ips), problems
