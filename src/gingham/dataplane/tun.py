"""TUN devices: the kernel hands a userspace tunnel every IP packet routed into the device,
and takes back every packet written to it. The device lives as long as its fd is open, so
a stopped agent leaves none behind.

The device is opened with a virtio-net header on every packet (IFF_VNET_HDR) and offers
checksum and TCPv4 segmentation offload, so one read can hand over a 64 KB TCP super
packet and one write can take one back (dataplane/tunnel_loops.c cuts and merges them)."""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01  # hand over packets whose checksum is still to compute
TUN_F_TSO4 = 0x02  # and TCPv4 packets of up to 64 KB, to segment


class TunError(RuntimeError):
    pass


def _open_clone_device() -> int:
    try:
        return os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise TunError(f"no TUN device (/dev/net/tun: {err.strerror}); the kernel needs "
                       "CONFIG_TUN for the udp and userspace ipip backends") from err


def check_tun() -> None:
    """Raise TunError unless TUN devices can be made here (before anything is torn down
    for a backend that needs one)."""
    os.close(_open_clone_device())


def open_tun(name: str) -> int:
    """Create TUN device `name` in this thread's namespace, with a vnet header and
    offloads; returns its fd."""
    fd = _open_clone_device()
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(),
                                               IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
    except OSError as err:
        os.close(fd)
        raise TunError(f"cannot create TUN device {name}: {err.strerror}") from err
    return fd
