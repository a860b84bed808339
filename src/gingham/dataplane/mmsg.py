"""sendmmsg(2) through libc: the datagrams of one buffer, sent to one address in one
system call, where Python's socket module has a call per datagram (raw IPIP has no GSO).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

MAX_BATCH = 1024  # UIO_MAXIOV, the kernel's limit of messages per call
FAMILY = struct.Struct("=H")
PORT_ADDRESS = struct.Struct("!H4s8x")  # the rest of a sockaddr_in, network order


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


_libc = ctypes.CDLL(None, use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int


class Sender:
    """Sends back-to-back datagrams of equal size (the last maybe shorter) from one socket
    to one IPv4 address per call; the message headers are made once, only the buffer
    addresses and lengths change per call."""

    def __init__(self, sock: socket.socket, batch: int) -> None:
        import numpy as np  # here: only the userspace engines pay for numpy

        self.fd = sock.fileno()
        self.batch = min(batch, MAX_BATCH)
        self._to = ctypes.create_string_buffer(FAMILY.size + PORT_ADDRESS.size)
        self._remote: tuple[str, int] | None = None
        self._iov = (_IoVec * self.batch)()
        self._msgs = (_MMsgHdr * self.batch)()
        for msg, iov in zip(self._msgs, self._iov, strict=True):
            msg.hdr.name = ctypes.addressof(self._to)
            msg.hdr.namelen = ctypes.sizeof(self._to)
            msg.hdr.iov = ctypes.addressof(iov)
            msg.hdr.iovlen = 1
        self._fields = np.ndarray((self.batch, 2), np.uint64, self._iov)  # base, len
        self._steps = np.arange(self.batch, dtype=np.uint64)

    def send(self, packets: memoryview, size: int, remote: tuple[str, int]) -> None:
        if remote != self._remote:
            self._to[:] = FAMILY.pack(socket.AF_INET) + PORT_ADDRESS.pack(
                remote[1], socket.inet_aton(remote[0]))
            self._remote = remote
        holder = (ctypes.c_char * len(packets)).from_buffer(packets)
        base = ctypes.addressof(holder)
        for o in range(0, len(packets), size * self.batch):
            count = min(self.batch, -(-(len(packets) - o) // size))
            self._fields[:count, 0] = self._steps[:count] * size + (base + o)
            self._fields[:count, 1] = size
            self._fields[count - 1, 1] = min(size, len(packets) - o - (count - 1) * size)
            self._send_all(count)
        del holder  # the buffer is exported while it lives

    def _send_all(self, count: int) -> None:
        sent = 0
        while sent < count:
            n = _sendmmsg(self.fd, ctypes.addressof(self._msgs) + sent * ctypes.sizeof(_MMsgHdr),
                          count - sent, 0)
            if n < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            sent += n
