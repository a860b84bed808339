"""Denied packets, seen: with `--log-denied` the policy table hands each packet it drops to
NFLOG group 100 (policy/compile.py), and the agent reads that group (nfnetlink_log) and
keeps the latest denials in `<run-dir>/flows.jsonl` for `gingham lab flows`. The log
prefix says which pod was isolated, in which direction, and by which policies."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gingham.dataplane.netns import attributes, messages
from gingham.dataplane.rtmsg import attribute
from gingham.policy.compile import LOG_GROUP

log = logging.getLogger("gingham.policy.flowlog")
NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG = struct.Struct("=IHHII")
NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big-endian group)
FLOWS_FILE = "flows.jsonl"  # in the agent's run directory
KEEP = 1000  # denials kept in the file
COPY_RANGE = 64  # bytes of each packet: its IP and transport headers
PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 132: "SCTP"}


@dataclass(frozen=True)
class Denial:
    time: float
    direction: str  # ingress or egress: which side's isolation dropped it
    pod: str  # the isolated pod, namespace/name
    policies: str  # the policies isolating it, comma-separated
    src: str
    dst: str
    protocol: str
    port: int | None  # the destination port, for TCP, UDP and SCTP


def _config(group: int, *attrs: bytes) -> bytes:
    body = NFGENMSG.pack(socket.AF_UNSPEC, 0, socket.htons(group)) + b"".join(attrs)
    return NLMSG.pack(NLMSG.size + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                      NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body


def parse_packets(data: bytes, now: float) -> list[Denial]:
    """The denials among the nfnetlink_log messages in `data`."""
    found = []
    for kind, body in messages(data):
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            attrs = attributes(body, NFGENMSG.size)
            denial = _denial(attrs.get(NFULA_PREFIX, b""), attrs.get(NFULA_PAYLOAD, b""), now)
            if denial is not None:
                found.append(denial)
    return found


def _denial(prefix: bytes, packet: bytes, now: float) -> Denial | None:
    words = prefix.rstrip(b"\0").decode(errors="replace").split(" ")
    if len(words) != 4 or words[0] != "gingham" or len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    header = (packet[0] & 0xF) * 4
    number = packet[9]
    port = None
    if number in (6, 17, 132) and len(packet) >= header + 4:
        port = struct.unpack_from("!H", packet, header + 2)[0]
    return Denial(now, words[1], words[2], words[3], socket.inet_ntoa(packet[12:16]),
                  socket.inet_ntoa(packet[16:20]), PROTOCOLS.get(number, str(number)), port)


class FlowLog:
    """Reads the node's NFLOG group in a thread; each denial is appended to `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._lines = 0

    def start(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            sock.bind((0, 0))
            sock.send(_config(LOG_GROUP, attribute(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))))
            sock.recv(4096)  # the ack
            sock.send(_config(LOG_GROUP, attribute(NFULA_CFG_MODE, struct.pack(
                "!IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0))))
            sock.recv(4096)
        except OSError:
            sock.close()
            raise
        sock.settimeout(0.5)
        self._sock = sock
        threading.Thread(target=self._run, name="flow-log", daemon=True).start()
        log.info("logging denied packets (NFLOG group %d) to %s", LOG_GROUP, self.path)

    def _run(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as err:
                if self._stop.is_set():
                    return
                log.warning("reading NFLOG: %s", err)  # ENOBUFS: some were lost
                continue
            self._write(parse_packets(data, time.time()))

    def _write(self, denials: list[Denial]) -> None:
        if not denials:
            return
        with open(self.path, "a") as out:
            out.writelines(json.dumps(asdict(d)) + "\n" for d in denials)
        self._lines += len(denials)
        if self._lines > 2 * KEEP:  # keep the file short: the latest KEEP
            kept = self.path.read_text().splitlines()[-KEEP:]
            self.path.write_text("".join(line + "\n" for line in kept))
            self._lines = len(kept)

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()


def read_denials(path: Path) -> list[Denial]:
    """What a node's agent recorded (none if it never logged)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            found.append(Denial(**json.loads(line)))
        except (ValueError, TypeError):
            continue  # a line cut short by a crash
    return found
