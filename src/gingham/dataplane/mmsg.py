"""sendmmsg(2) and recvmmsg(2) through libc: many datagrams of one socket in one system
call, where Python's socket module has a call per datagram (raw IPIP has no GSO or GRO).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

MAX_BATCH = 1024  # UIO_MAXIOV, the kernel's limit of messages per call
FAMILY = struct.Struct("=H")
PORT_ADDRESS = struct.Struct("!H4s8x")  # the rest of a sockaddr_in, network order
NAME_SIZE = FAMILY.size + PORT_ADDRESS.size  # a sockaddr_in


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
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                      ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
MSG_TRUNC = 0x20


class Sender:
    """Sends back-to-back datagrams of equal size (the last maybe shorter) from one socket
    to one IPv4 address per call; the message headers are made once, only the buffer
    addresses and lengths change per call."""

    def __init__(self, sock: socket.socket, batch: int) -> None:
        self.fd = sock.fileno()
        self._to = ctypes.create_string_buffer(FAMILY.size + PORT_ADDRESS.size)
        self._remote: tuple[str, int] | None = None
        self._msgs, self._fields, self._steps = _messages(min(batch, MAX_BATCH), self._to, 0)
        self.batch = len(self._steps)

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


class Receiver:
    """Receives up to `batch` datagrams of at most `slot` bytes each in one call, datagram
    i at i * `slot` of the caller's buffer; the message headers are made once."""

    def __init__(self, sock: socket.socket, batch: int, slot: int) -> None:
        self.fd = sock.fileno()
        self.slot = slot
        self._names = ctypes.create_string_buffer(NAME_SIZE * min(batch, MAX_BATCH))
        self._msgs, self._fields, self._steps = _messages(min(batch, MAX_BATCH), self._names,
                                                          NAME_SIZE)
        import numpy as np

        size = ctypes.sizeof(_MMsgHdr)
        self._lengths = np.ndarray((len(self._steps),), np.uint32, self._msgs,
                                   _MMsgHdr.len.offset, (size,))
        self._flags = np.ndarray((len(self._steps),), np.int32, self._msgs,
                                 _MMsgHdr.hdr.offset + _MsgHdr.flags.offset, (size,))
        self._into = (0, 0)  # the buffer address and slot count the iovecs were set for

    def receive(self, buf: bytearray) -> list[tuple[str, int, int]]:
        """(sender, start, end) of each datagram now waiting, read into `buf`; one too large
        for its slot is left out. None waiting: an empty list."""
        count = min(len(self._steps), len(buf) // self.slot)
        holder = (ctypes.c_char * len(buf)).from_buffer(buf)
        if self._into != (ctypes.addressof(holder), count):  # the iovecs point into `buf`
            self._into = (ctypes.addressof(holder), count)
            self._fields[:count, 0] = self._steps[:count] * self.slot + self._into[0]
            self._fields[:count, 1] = self.slot
        # each namelen comes back as it went: the kernel writes a sockaddr_in's size
        n = _recvmmsg(self.fd, ctypes.addressof(self._msgs), count, socket.MSG_DONTWAIT, None)
        del holder  # the buffer is exported while it lives
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                return []
            raise OSError(err, os.strerror(err))
        names = self._names.raw
        return [(socket.inet_ntoa(names[i * NAME_SIZE + 4:i * NAME_SIZE + 8]), i * self.slot,
                 i * self.slot + int(self._lengths[i]))
                for i in range(n) if not self._flags[i] & MSG_TRUNC]


def _messages(count: int, names: ctypes.Array, name_step: int) -> tuple:
    """`count` message headers of one iovec each, message i's address at `names` +
    i * `name_step`; a numpy view of the iovecs' (base, len); 0..count-1."""
    import numpy as np  # here: only the userspace engines pay for numpy

    iov = (_IoVec * count)()
    msgs = (_MMsgHdr * count)()
    for i, (msg, vec) in enumerate(zip(msgs, iov, strict=True)):
        msg.hdr.name = ctypes.addressof(names) + i * name_step
        msg.hdr.namelen = NAME_SIZE
        msg.hdr.iov = ctypes.addressof(vec)
        msg.hdr.iovlen = 1
    # the numpy view of the iovecs keeps them alive as long as the headers pointing there
    return msgs, np.ndarray((count, 2), np.uint64, iov), np.arange(count, dtype=np.uint64)
