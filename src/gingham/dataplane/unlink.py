"""Deleting a link, answered once the kernel has unlinked it rather than once it has freed it.

RTM_DELLINK of a veth returns only when the kernel is done with the pair: after the part it
runs under the rtnl lock (unlist both ends, leave the bridge, drop addresses and routes,
tell listeners RTM_DELLINK, remove the sysfs entries, wait for readers, each with an
expedited RCU grace period) it releases the lock and then, still in the caller's syscall,
waits for RCU callbacks and for the last references to drop before freeing the devices
(netdev_run_todo). That second part is 50-70% of the ~20 ms a DEL spends in the kernel here,
and nothing outside the kernel can see it: both names are free, the pod's addresses and
routes gone, and any later link change waits for the lock the first part holds.

So the request runs on a helper thread and the caller returns at the RTM_DELLINK
notification of the link (sent inside the locked part, after both ends were unlisted) or
when the request itself is answered (an error, e.g. no such link), whichever comes first.
"""

from __future__ import annotations

import os
import select
import socket
from concurrent.futures import ThreadPoolExecutor

from pyroute2.netlink.exceptions import NetlinkError

from gingham.dataplane.netns import NETLINK_ROUTE, Rtnl, attributes, messages, rtnl_socket
from gingham.dataplane.podlink import ENODEV, IFINFO, IFLA_IFNAME, RTM_DELLINK, del_link

RTMGRP_LINK = 1
AF_UNSPEC = 0  # the link itself; a bridge port's leaving is also told as AF_BRIDGE
HELPERS = 8  # deletions in flight at once; more wait for a free helper


def is_unlinked(datagram: bytes, name: str) -> bool:
    """Whether a datagram of link events holds RTM_DELLINK of the link `name` itself."""
    wanted = name.encode() + b"\0"
    return any(kind == RTM_DELLINK and len(body) >= IFINFO.size and body[0] == AF_UNSPEC
               and attributes(body, IFINFO.size).get(IFLA_IFNAME) == wanted
               for kind, body in messages(datagram))


class Unlinker:
    """Deletes links in the calling thread's namespace (its sockets are made there)."""

    def __init__(self, helpers: int = HELPERS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=helpers, thread_name_prefix="unlink")

    def delete(self, name: str) -> bool:
        """Delete the link `name`; True if it was there. Returns once it is unlinked."""
        events = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                               NETLINK_ROUTE)
        try:
            events.bind((0, RTMGRP_LINK))  # before the request: its event must not be missed
            request = rtnl_socket()
            done_r, done_w = os.pipe2(os.O_CLOEXEC)
            try:
                answer = self._pool.submit(_delete, request, name, done_w)
            except BaseException:
                request.close()
                os.close(done_w)
                os.close(done_r)
                raise
            try:
                if self._wait_unlinked(events, done_r, name):
                    return True
            finally:
                os.close(done_r)
            error, why = answer.result()  # done_w is closed: the answer is set, or about to be
        finally:
            events.close()
        if error == ENODEV:
            return False
        if error:
            raise NetlinkError(error, f"{os.strerror(error)}: {why}" if why else None)
        return True

    @staticmethod
    def _wait_unlinked(events: socket.socket, done: int, name: str) -> bool:
        """True at the link's RTM_DELLINK; False once the request is answered (the answer
        then says how it went)."""
        watching = [events, done]
        while True:
            ready, _, _ = select.select(watching, [], [])
            if done in ready:
                return False
            try:
                if is_unlinked(events.recv(1 << 16), name):
                    return True
            except OSError:  # ENOBUFS: events were lost, perhaps ours; wait for the answer
                watching = [done]

    def close(self) -> None:
        """Wait for deletions still in the kernel, so the process outlives none of them."""
        self._pool.shutdown(wait=True)


def _delete(request: Rtnl, name: str, done: int) -> tuple[int, str]:
    try:
        ((error, why, _),) = request.request(del_link(name))
        return error, why
    finally:
        request.close()
        os.close(done)  # wakes the caller's select with EOF
