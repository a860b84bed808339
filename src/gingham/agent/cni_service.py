"""The agent's answer to each plugin call: ADD, DEL, CHECK, STATUS and GC, for the main
plugin (`gingham`) and the IPAM plugin (`gingham-ipam`).

An ADD either completes or leaves nothing behind: a failure after the address is reserved or
the veth is made undoes both before the error is returned.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
from collections.abc import Callable

from pyroute2 import IPRoute

from gingham.agent import delegate
from gingham.agent.config import AgentConfig
from gingham.cni.environment import PluginEnv, parse_env, pod_of
from gingham.cni.result import Interface, IPConfig, Result, Route
from gingham.cni.spec import (
    DATAPLANE_FAILURE,
    INCOMPATIBLE_VERSION,
    INTERFACE_EXISTS,
    INTERNAL,
    INVALID_CONFIG,
    PLUGIN_NOT_AVAILABLE,
    UNKNOWN_CONTAINER,
    VERSION_1_1_COMMANDS,
    CniError,
    version_info,
    version_tuple,
)
from gingham.cni.wire import PluginCall
from gingham.dataplane import netns, podlink
from gingham.dataplane.bridge import ensure_bridge, link_index
from gingham.dataplane.unlink import Unlinker
from gingham.ipam.hostlocal import HostLocalIpam
from gingham.ipam.ranges import AddressRange
from gingham.ipam.store import Owner
from gingham.model import netconf
from gingham.model.netconf import IPAM_TYPE, IpamConf, NetConf
from gingham.workloads.recorder import WorkloadRecorder

log = logging.getLogger("gingham.agent.cni")
DEFAULT_ROUTE = ipaddress.IPv4Network("0.0.0.0/0")

Handler = Callable[[PluginEnv, NetConf], dict | None]


def owner_mark(network: str, env: PluginEnv) -> str:
    """The alias every host veth carries: whose it is, so GC removes only its own."""
    return f"gingham {network} {env.container_id} {env.ifname}"


class CniService:
    def __init__(self, config: AgentConfig, mtu: int) -> None:
        self.config = config
        self.mtu = mtu
        self.ipam = HostLocalIpam(config.ipam_dir)
        if config.pod_subnet is not None:
            self.ipam.prepare([AddressRange.for_subnet(config.pod_subnet)])
        self.unlinker = Unlinker()
        # Set once the node has joined a datastore (none in static mode): pods recorded.
        self.workloads: WorkloadRecorder | None = None
        self._local = threading.local()
        self._handlers: dict[tuple[str, str], Handler] = {
            ("main", "ADD"): self.main_add,
            ("main", "DEL"): self.main_del,
            ("main", "CHECK"): self.main_check,
            ("main", "GC"): self.main_gc,
            ("main", "STATUS"): self.status,
            ("ipam", "ADD"): self.ipam_only_add,
            ("ipam", "DEL"): self.ipam_only_del,
            ("ipam", "CHECK"): self.ipam_only_check,
            ("ipam", "GC"): self.ipam_gc,
            ("ipam", "STATUS"): self.status,
        }

    # -- plumbing ---------------------------------------------------------------------

    def node(self) -> IPRoute:
        """This worker thread's netlink handle for the node's namespace."""
        ipr = getattr(self._local, "ipr", None)
        if ipr is None:
            ipr = self._local.ipr = netns.iproute()
        return ipr

    def node_rtnl(self) -> netns.Rtnl:
        """This worker thread's bare netlink socket for the node's namespace: ADD's hot path
        (see podlink.connect), where each pyroute2 call would cost ~0.2 ms."""
        rtnl = getattr(self._local, "rtnl", None)
        if rtnl is None:
            rtnl = self._local.rtnl = netns.rtnl_socket()
        return rtnl

    def pod_rtnl(self, pod_fd: int) -> netns.Rtnl:
        """A bare netlink socket in the pod's namespace, made by this worker thread, which
        keeps its own namespace open for it (the worker lives in the node's)."""
        home = getattr(self._local, "home", None)
        if home is None:
            home = self._local.home = os.open("/proc/thread-self/ns/net",
                                              os.O_RDONLY | os.O_CLOEXEC)
        return netns.rtnl_socket(pod_fd, home)

    def handle(self, call: PluginCall) -> tuple[int, bytes]:
        try:
            env = parse_env(call.env)
            if env.command == "VERSION":
                return 0, json.dumps(version_info()).encode()
            conf = netconf.parse(call.stdin, ipam_only=call.role == "ipam")
            version = conf.cni_version
            if env.command in VERSION_1_1_COMMANDS and version_tuple(version) < (1, 1, 0):
                raise CniError(INCOMPATIBLE_VERSION,
                               f"{env.command} needs cniVersion 1.1.0 or later", version)
            handler = self._handlers.get((call.role, env.command))
            if handler is None:
                raise CniError(INVALID_CONFIG, f"unknown plugin role {call.role!r}")
            result = handler(env, conf)
        except CniError as err:
            log.info("%s %s failed: %s", call.role, call.command, err)
            return 1, err.to_json(netconf.reply_version(call.stdin)).encode()
        except Exception as err:
            log.exception("%s %s crashed", call.role, call.command)
            error = CniError(INTERNAL, "gingham agent failed", repr(err))
            return 1, error.to_json(netconf.reply_version(call.stdin)).encode()
        return 0, (json.dumps(result).encode() if result is not None else b"")

    def _ranges(self, ipam: IpamConf) -> list[AddressRange]:
        if ipam.ranges:
            return [AddressRange.from_spec(r) for r in ipam.ranges]
        return [AddressRange.for_subnet(self.config.pod_subnet)]

    @staticmethod
    def _ipam_conf(conf: NetConf) -> IpamConf:
        return conf.ipam or IpamConf(type=IPAM_TYPE)

    @staticmethod
    def _open_pod(env: PluginEnv) -> tuple[int, IPRoute]:
        fd = CniService._open_pod_fd(env)
        try:
            return fd, netns.iproute(env.netns)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _open_pod_fd(env: PluginEnv) -> int:
        try:
            return netns.open_netns(env.netns)
        except netns.NetnsNotFound as err:
            raise CniError(UNKNOWN_CONTAINER, "network namespace does not exist",
                           env.netns) from err

    # -- IPAM, in-process or delegated ------------------------------------------------

    def _ipam_add(self, env: PluginEnv, conf: NetConf) -> Result:
        ipam = self._ipam_conf(conf)
        if ipam.type != IPAM_TYPE:
            result = delegate.exec_plugin(ipam.type, "ADD", env, conf.raw)
            assert result is not None
            return result
        rng, address = self.ipam.allocate(
            self._ranges(ipam), Owner(env.container_id, env.ifname, conf.name)
        )
        interface = ipaddress.IPv4Interface(f"{address}/{rng.subnet.prefixlen}")
        return Result(ips=[IPConfig(interface, rng.gateway)], routes=list(ipam.routes))

    def _ipam_del(self, env: PluginEnv, conf: NetConf) -> None:
        ipam = self._ipam_conf(conf)
        if ipam.type != IPAM_TYPE:
            delegate.exec_plugin(ipam.type, "DEL", env, conf.raw)
        else:
            self.ipam.release(env.container_id, env.ifname)

    def _ipam_check(self, env: PluginEnv, conf: NetConf) -> None:
        ipam = self._ipam_conf(conf)
        if ipam.type != IPAM_TYPE:
            delegate.exec_plugin(ipam.type, "CHECK", env, conf.raw)
            return
        if not self.ipam.find(env.container_id, env.ifname):
            raise CniError(DATAPLANE_FAILURE, "no address is reserved for this attachment",
                           f"{env.container_id}/{env.ifname}")

    def ipam_gc(self, env: PluginEnv, conf: NetConf) -> None:
        if conf.valid_attachments is None:
            raise CniError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments")
        ipam = self._ipam_conf(conf)
        if ipam.type != IPAM_TYPE:
            delegate.exec_plugin(ipam.type, "GC", env, conf.raw)
            return
        released = self.ipam.garbage_collect(conf.name, set(conf.valid_attachments))
        if released:
            log.info("GC of %s released %s", conf.name, ", ".join(map(str, released)))

    def status(self, env: PluginEnv, conf: NetConf) -> None:
        ipam = self._ipam_conf(conf)
        if ipam.type == IPAM_TYPE and self.ipam.free_count(self._ranges(ipam)) == 0:
            raise CniError(PLUGIN_NOT_AVAILABLE, "no free pod address left on this node",
                           str(self.config.pod_subnet))

    # -- the IPAM plugin (gingham-ipam) -----------------------------------------------

    def ipam_only_add(self, env: PluginEnv, conf: NetConf) -> dict:
        self._require_own_ipam(conf)
        # Like host-local: a second ADD of a live attachment (into another sandbox) must not
        # get the first one's address back, or two pods would share it.
        held = self.ipam.find(env.container_id, env.ifname)
        if held:
            raise CniError(INTERFACE_EXISTS, "the attachment already holds an address",
                           f"{env.container_id}/{env.ifname}: {', '.join(map(str, held))}")
        result = self._ipam_add(env, conf)
        result.dns = conf.dns
        return result.to_json(conf.cni_version)

    def ipam_only_del(self, env: PluginEnv, conf: NetConf) -> None:
        self._require_own_ipam(conf)
        self._ipam_del(env, conf)

    def ipam_only_check(self, env: PluginEnv, conf: NetConf) -> None:
        self._require_own_ipam(conf)
        self._ipam_check(env, conf)

    @staticmethod
    def _require_own_ipam(conf: NetConf) -> None:
        if conf.ipam is None or conf.ipam.type != IPAM_TYPE:
            raise CniError(INVALID_CONFIG, f"gingham-ipam called for ipam type "
                           f"{conf.ipam.type if conf.ipam else None!r}")

    # -- the main plugin (gingham) ----------------------------------------------------

    def _bridge_index(self, conf: NetConf, gateway: ipaddress.IPv4Interface, mtu: int) -> int:
        node = self.node()
        if conf.bridge == self.config.bridge:
            index = link_index(node, conf.bridge)
            if index is not None:
                return index
        return ensure_bridge(node, conf.bridge, gateway, mtu)

    def record_added(self, env: PluginEnv, ip: str) -> None:
        if self.workloads is not None:
            self.workloads.added(*pod_of(env), ip, env.container_id)

    def record_deleted(self, env: PluginEnv) -> None:
        if self.workloads is not None:
            self.workloads.deleted(*pod_of(env), env.container_id)

    def main_add(self, env: PluginEnv, conf: NetConf) -> dict:
        mtu = conf.mtu or self.mtu
        pod_fd = self._open_pod_fd(env)
        try:
            ours = self._attach(env, conf, pod_fd, mtu)
        finally:
            os.close(pod_fd)
        self.record_added(env, str(ours.ips[0].address.ip))
        if conf.prev_result is not None:
            ours = conf.prev_result.extended_by(ours)
        return ours.to_json(conf.cni_version)

    def _attach(self, env: PluginEnv, conf: NetConf, pod_fd: int, mtu: int) -> Result:
        host_name = podlink.host_veth_name(env.container_id, env.ifname)
        node = self.node_rtnl()
        # Both lookups in one round trip; the bridge's is only used if it is the node's own.
        host_index, bridge = podlink.lookup(node, host_name, conf.bridge)
        if host_index is not None:
            # The runtime ADDed this attachment again (the spec forbids it), into another
            # netns: refuse before IPAM, or the rollback would tear down the live one.
            raise CniError(INTERFACE_EXISTS, "the attachment already exists on this node",
                           f"{host_name} for {env.container_id}/{env.ifname}")
        ipam_result = self._ipam_add(env, conf)
        try:
            if not ipam_result.ips:
                raise CniError(INTERNAL, "IPAM returned no address")
            ip = ipam_result.ips[0]
            gateway = ip.gateway or ip.address.network.network_address + 1
            routes = ipam_result.routes or [Route(DEFAULT_ROUTE, gateway)]
            if bridge is None or conf.bridge != self.config.bridge:
                bridge = self._bridge_index(
                    conf, ipaddress.IPv4Interface(f"{gateway}/{ip.address.network.prefixlen}"),
                    mtu)
            # A bare socket, not an IPRoute: ~20 us to make against ~0.2 ms (see netns).
            # connect also sets the owner mark (alias) that GC goes by.
            with self.pod_rtnl(pod_fd) as pod:
                link = podlink.connect(
                    node, pod, pod_fd,
                    host_name=host_name, pod_name=env.ifname, mtu=mtu, address=ip.address,
                    gateway=gateway, bridge_index=bridge, hairpin=conf.hairpin,
                    routes=[(r.dst, r.gw) for r in routes], alias=owner_mark(conf.name, env),
                )
        except podlink.PodNameTaken:
            self._rollback(env, conf, host_name)
            raise CniError(INTERFACE_EXISTS, "interface already exists in the pod",
                           f"{env.ifname} in {env.netns}") from None
        except BaseException:
            self._rollback(env, conf, host_name)
            raise
        return Result(
            interfaces=[Interface(link.host_name, link.host_mac),
                        Interface(link.pod_name, link.pod_mac, sandbox=env.netns)],
            ips=[IPConfig(ip.address, gateway, interface=1)],
            routes=[Route(r.dst, r.gw or gateway) for r in routes],
            dns=conf.dns,
        )

    def _rollback(self, env: PluginEnv, conf: NetConf, host_name: str) -> None:
        try:
            podlink.remove_link(self.node(), host_name)
        finally:
            self._ipam_del(env, conf)

    def main_del(self, env: PluginEnv, conf: NetConf) -> None:
        # Deleting the host end deletes the pair. The pod's CNI_IFNAME is never removed on
        # its own: without our host end it is not our veth (e.g. DEL cleaning up an ADD that
        # failed because another attachment or plugin already owns that name).
        # Answered once both ends are unlinked, before the kernel frees them (see unlink):
        # a following ADD of this attachment finds both names free.
        self.unlinker.delete(podlink.host_veth_name(env.container_id, env.ifname))
        self._ipam_del(env, conf)
        self.record_deleted(env)

    def close(self) -> None:
        self.unlinker.close()
        self.ipam.close()
        if self.workloads is not None:
            self.workloads.close()

    def main_check(self, env: PluginEnv, conf: NetConf) -> None:
        if conf.prev_result is None:
            raise CniError(INVALID_CONFIG, "CHECK needs prevResult")
        pod_fd, pod = self._open_pod(env)
        try:
            self._check_pod(env, conf.prev_result, pod)
        finally:
            pod.close()
            os.close(pod_fd)
        host = link_index(self.node(), podlink.host_veth_name(env.container_id, env.ifname))
        if host is None:
            raise CniError(DATAPLANE_FAILURE, "the host end of the pod's veth is missing")
        bridge = link_index(self.node(), conf.bridge)
        (link,) = self.node().get_links(host)
        if bridge is None or link.get_attr("IFLA_MASTER") != bridge:
            raise CniError(DATAPLANE_FAILURE, f"the pod's veth is not on bridge {conf.bridge}")
        self._ipam_check(env, conf)

    @staticmethod
    def _check_pod(env: PluginEnv, prev: Result, pod: IPRoute) -> None:
        index = link_index(pod, env.ifname)
        if index is None:
            raise CniError(DATAPLANE_FAILURE, f"{env.ifname} is missing in the pod")
        sandbox = [i for i, iface in enumerate(prev.interfaces)
                   if iface.name == env.ifname and iface.sandbox]
        want = {ip.address for ip in prev.ips if ip.interface in sandbox}
        have = {
            ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in pod.get_addr(index=index, family=2)
        }
        if want - have:
            raise CniError(DATAPLANE_FAILURE, f"{env.ifname} lacks its addresses",
                           ", ".join(map(str, sorted(want - have))))
        routes = {(r["dst_len"], r.get_attr("RTA_DST")) for r in pod.get_routes(family=2,
                                                                                table=254)}
        for route in prev.routes:
            dst = route.dst
            key = (dst.prefixlen, None if dst.prefixlen == 0 else str(dst.network_address))
            if key not in routes:
                raise CniError(DATAPLANE_FAILURE, f"route {dst} is missing in the pod")

    def main_gc(self, env: PluginEnv, conf: NetConf) -> None:
        self.ipam_gc(env, conf)
        valid = {owner_mark(conf.name, PluginEnv("GC", cid, ifname=ifname))
                 for cid, ifname in conf.valid_attachments or []}
        prefix = f"gingham {conf.name} "
        node = self.node()
        for link in node.get_links():
            alias = link.get_attr("IFLA_IFALIAS") or ""
            if alias.startswith(prefix) and alias not in valid:
                log.info("GC removes %s (%s)", link.get_attr("IFLA_IFNAME"), alias)
                podlink.remove_link(node, link.get_attr("IFLA_IFNAME"))
