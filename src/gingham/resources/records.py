"""Resources that live in records other parts of Gingham write: a Node in the node record
its agent keeps, a Pod or Namespace in the workload records the CNI service keeps. Applying
one changes what the resource says (labels, BGP fields, named ports) and keeps the rest
(the node's addresses, the pod's IP); reading one shows the record as the resource."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from gingham.resources.document import Resource, ResourceError
from gingham.subnet.lease import NodeInfo
from gingham.workloads.records import NAMESPACE_NAME_LABEL, NamedPort, Namespace, Pod


class NodeRecords:
    @staticmethod
    def resource(value: bytes) -> Resource:
        node = NodeInfo.decode(value)
        bgp: dict = {"ipv4Address": node.ipv4_address or f"{node.public_ip}/32"}
        if node.asn is not None:
            bgp["asNumber"] = node.asn
        if node.rr_cluster_id:
            bgp["routeReflectorClusterID"] = node.rr_cluster_id
        return Resource("Node", node.name, {"bgp": bgp}, dict(node.labels))

    @staticmethod
    def merged(resource: Resource, stored: bytes | None) -> bytes:
        bgp = resource.spec["bgp"]
        address = bgp.get("ipv4Address")
        if stored is not None:
            node = NodeInfo.decode(stored)
        elif address is None:
            raise ResourceError(f"{resource.named}: a new node needs spec.bgp.ipv4Address")
        else:
            node = NodeInfo(resource.name, ipaddress.IPv4Interface(address).ip)
        ip = ipaddress.IPv4Interface(address).ip if address else node.public_ip
        return replace(node, labels=dict(resource.labels), asn=bgp.get("asNumber"),
                       rr_cluster_id=bgp.get("routeReflectorClusterID", ""),
                       ipv4_address=address or node.ipv4_address, public_ip=ip).encode()


class PodRecords:
    @staticmethod
    def resource(value: bytes) -> Resource:
        pod = Pod.decode(value)
        spec: dict = {"nodeName": pod.node} if pod.node else {}
        if pod.ports:
            spec["containers"] = [{"name": "c0", "ports": [
                {"containerPort": p.port, "protocol": p.protocol, "name": p.name}
                for p in pod.ports]}]
        return Resource("Pod", pod.name, spec, dict(pod.labels), pod.namespace)

    @staticmethod
    def merged(resource: Resource, stored: bytes | None) -> bytes:
        pod = Pod.decode(stored) if stored is not None else Pod(resource.namespace,
                                                                resource.name)
        ports = []
        for container in resource.spec.get("containers", []):
            for port in container.get("ports", []):
                if "name" in port:
                    text = f"{port['name']}={port['containerPort']}/{port['protocol']}"
                    try:
                        ports.append(NamedPort.parse(text))
                    except ValueError as err:
                        raise ResourceError(f"{resource.named}: {err}") from None
        return replace(pod, labels=dict(resource.labels), ports=ports,
                       node=resource.spec.get("nodeName", pod.node)).encode()


class NamespaceRecords:
    @staticmethod
    def resource(value: bytes) -> Resource:
        namespace = Namespace.decode(value)
        return Resource("Namespace", namespace.name, {}, dict(namespace.labels))

    @staticmethod
    def merged(resource: Resource, stored: bytes | None) -> bytes:
        labels = {**resource.labels, NAMESPACE_NAME_LABEL: resource.name}
        return Namespace(resource.name, labels).encode()


NODE_RECORDS, POD_RECORDS, NAMESPACE_RECORDS = NodeRecords(), PodRecords(), NamespaceRecords()
