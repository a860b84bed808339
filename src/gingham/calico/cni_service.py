"""The CNI service of a Calico-mode node: the same plumbing as Flannel mode's (one
connection per plugin call, checked environment and config), with block IPAM from the
datastore and Calico's routed `cali*` attachment instead of host-local files and a bridge.

The handle of an attachment is `k8s-pod-network.<containerID>`; its addresses carry the
pod's namespace and name (from CNI_ARGS K8S_POD_NAMESPACE / K8S_POD_NAME, as kubelet
passes them) and this node, which the other nodes route borrowed addresses by.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable, Mapping

from gingham.agent.cni_service import CniService, owner_mark
from gingham.agent.config import AgentConfig
from gingham.cni.environment import PluginEnv, pod_of
from gingham.cni.result import Interface, IPConfig, Result, Route
from gingham.cni.spec import (
    ADDRESSES_EXHAUSTED,
    DATAPLANE_FAILURE,
    INTERFACE_EXISTS,
    INVALID_CONFIG,
    PLUGIN_NOT_AVAILABLE,
    TRY_AGAIN_LATER,
    CniError,
)
from gingham.dataplane import podlink
from gingham.dataplane.bridge import link_index
from gingham.ipam.block_ipam import BlockIpam, IpamConflict, IpamExhausted
from gingham.ipam.blocks import handle_of
from gingham.model.netconf import NetConf
from gingham.store.contract import StoreError

log = logging.getLogger("gingham.calico.cni")
DEFAULT_ROUTE = ipaddress.IPv4Network("0.0.0.0/0")


class CalicoCniService(CniService):
    def __init__(self, config: AgentConfig, mtu: int, ipam: BlockIpam,
                 labels: Callable[[], Mapping[str, str]]) -> None:
        super().__init__(config, mtu)
        self.blocks = ipam
        self.labels = labels  # this node's labels now: pools select nodes by them

    def _host_name(self, env: PluginEnv) -> str:
        return podlink.routed_veth_name(*pod_of(env))

    # -- IPAM ---------------------------------------------------------------------------

    def _ipam_add(self, env: PluginEnv, conf: NetConf) -> Result:
        namespace, pod = pod_of(env)
        try:
            got = self.blocks.assign(self.config.node_name, self.labels(), {
                "handle": handle_of(env.container_id), "namespace": namespace, "pod": pod,
                "node": self.config.node_name})
        except IpamExhausted as err:
            raise CniError(ADDRESSES_EXHAUSTED, "no free pod address", str(err)) from None
        except (IpamConflict, StoreError) as err:
            raise CniError(TRY_AGAIN_LATER, "the datastore did not take the address",
                           str(err)) from None
        return Result(ips=[IPConfig(ipaddress.IPv4Interface(f"{got.address}/32"), None)],
                      routes=[Route(DEFAULT_ROUTE, None)])

    def _ipam_del(self, env: PluginEnv, conf: NetConf) -> None:
        try:
            self.blocks.release(handle_of(env.container_id))
        except (IpamConflict, StoreError) as err:
            raise CniError(TRY_AGAIN_LATER, "the datastore did not release the address",
                           str(err)) from None

    def _ipam_check(self, env: PluginEnv, conf: NetConf) -> None:
        blocks, _ = self.blocks.blocks()
        handle = handle_of(env.container_id)
        if not any(attrs.get("handle") == handle for stored in blocks.values()
                   for _, attrs in stored.block.holders()):
            raise CniError(DATAPLANE_FAILURE, "no address is held for this attachment", handle)

    def ipam_gc(self, env: PluginEnv, conf: NetConf) -> None:
        if conf.valid_attachments is None:
            raise CniError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments")
        valid = {handle_of(cid) for cid, _ in conf.valid_attachments}
        blocks, _ = self.blocks.blocks()
        mine = {attrs["handle"] for stored in blocks.values()
                for _, attrs in stored.block.holders()
                if attrs.get("node") == self.config.node_name and "handle" in attrs}
        for handle in sorted(mine - valid):
            log.info("GC releases %s", handle)
            self.blocks.release(handle)

    def status(self, env: PluginEnv, conf: NetConf) -> None:
        if not any(p.selects(self.labels()) for p in self.blocks.pools()):
            raise CniError(PLUGIN_NOT_AVAILABLE, "no enabled IP pool selects this node",
                           self.config.node_name)

    # -- the main plugin ----------------------------------------------------------------

    def main_add(self, env: PluginEnv, conf: NetConf) -> dict:
        mtu = conf.mtu or self.mtu
        host_name = self._host_name(env)
        node = self.node_rtnl()
        (existing,) = podlink.lookup(node, host_name)
        if existing is not None:
            raise CniError(INTERFACE_EXISTS, "the pod already has an attachment on this node",
                           f"{host_name} for {'/'.join(pod_of(env))}")
        ipam_result = self._ipam_add(env, conf)
        address = ipam_result.ips[0].address.ip
        pod_fd = self._open_pod_fd(env)
        try:
            with self.pod_rtnl(pod_fd) as pod:
                link = podlink.connect_routed(
                    node, pod, pod_fd, host_name=host_name, pod_name=env.ifname, mtu=mtu,
                    address=address, alias=owner_mark(conf.name, env))
        except podlink.PodNameTaken:
            self._rollback(env, conf, host_name)
            raise CniError(INTERFACE_EXISTS, "interface already exists in the pod",
                           f"{env.ifname} in {env.netns}") from None
        except BaseException:
            self._rollback(env, conf, host_name)
            raise
        finally:
            os.close(pod_fd)
        ours = Result(
            interfaces=[Interface(link.host_name, link.host_mac),
                        Interface(link.pod_name, link.pod_mac, sandbox=env.netns)],
            ips=[IPConfig(ipaddress.IPv4Interface(f"{address}/32"), None, interface=1)],
            routes=[Route(DEFAULT_ROUTE, None)],
            dns=conf.dns,
        )
        self.record_added(env, str(address))
        if conf.prev_result is not None:
            ours = conf.prev_result.extended_by(ours)
        return ours.to_json(conf.cni_version)

    def main_del(self, env: PluginEnv, conf: NetConf) -> None:
        self.unlinker.delete(self._host_name(env))
        self._ipam_del(env, conf)
        self.record_deleted(env)

    def main_check(self, env: PluginEnv, conf: NetConf) -> None:
        if conf.prev_result is None:
            raise CniError(INVALID_CONFIG, "CHECK needs prevResult")
        pod_fd, pod = self._open_pod(env)
        try:
            self._check_pod(env, conf.prev_result, pod)
        finally:
            pod.close()
            os.close(pod_fd)
        if link_index(self.node(), self._host_name(env)) is None:
            raise CniError(DATAPLANE_FAILURE, "the host end of the pod's veth is missing")
        self._ipam_check(env, conf)
