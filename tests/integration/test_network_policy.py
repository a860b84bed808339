"""NetworkPolicy enforced by the agents in both cluster modes (issue 12): the seeds' worked
examples with real TCP connections, live connections following a policy change, and no
table at all where no pod is isolated."""

from __future__ import annotations

import json
import socket
import threading
from contextlib import ExitStack

import pytest

from gingham.dataplane import netns as netns_mod
from waiting import eventually

PORT = 80
ACCESS_WEB = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: access-web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {run: client1}}}]
    ports: [{protocol: TCP, port: 80}]
"""
DENY_OTHER_NAMESPACES = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-from-other-namespaces, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from: [{podSelector: {}}]
"""


class EchoServers:
    """A TCP echo server on PORT in each given pod, made in the pod's namespace by this
    process; closed at the end whatever happens."""

    def __init__(self, lab, pods: list[str], stack: ExitStack) -> None:
        self.lab = lab
        for pod in pods:
            with netns_mod.entered(lab.netns_path(pod)):
                server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            stack.callback(server.close)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("0.0.0.0", PORT))
            server.listen(16)
            threading.Thread(target=self._serve, args=(server,), daemon=True).start()

    @staticmethod
    def _serve(server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=EchoServers._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:
                return  # the client gave up on a connection a policy cut

    def connect(self, source: str, address: str, timeout: float = 1.5) -> socket.socket | None:
        with netns_mod.entered(self.lab.netns_path(source)):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.settimeout(timeout)
        try:
            client.connect((address, PORT))
        except OSError:
            client.close()
            return None
        return client

    def reaches(self, source: str, address: str) -> bool:
        client = self.connect(source, address)
        if client is None:
            return False
        with client:
            return echoes(client)


def echoes(client: socket.socket) -> bool:
    try:
        client.sendall(b"ping")
        return client.recv(16) == b"ping"
    except OSError:
        return False


def apply(cli, lab, tmp_path, text: str, name: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    done = cli("--lab", lab.name, "apply", "-f", str(path))
    assert done.returncode == 0, done.stderr


def has_table(lab, node: str) -> bool:
    return lab.run(node, "nft", "list", "table", "inet", "gingham_policy",
                   check=False).returncode == 0


MODES = {"flannel": (), "calico": ("--mode", "calico")}


@pytest.mark.parametrize("mode", list(MODES))
def test_the_seeds_examples_and_live_connections(make_lab, cli, tmp_path, mode):
    lab = make_lab(2, via_cli=True, cli_args=MODES[mode])
    web = lab.add_pod("node1", "default/web", labels={"app": "web"}).ip
    lab.add_pod("node2", "default/client1", labels={"run": "client1"})
    lab.add_pod("node1", "default/client2", labels={"run": "client2"})  # web's own node
    other = lab.add_pod("node2", "test/other").ip
    with ExitStack() as stack:
        servers = EchoServers(lab, ["default/web", "test/other"], stack)
        # (with BGP, across nodes once the blocks are learned)
        assert eventually(lambda: servers.reaches("test/other", web))
        assert servers.reaches("default/client2", web)
        assert not has_table(lab, "node1")  # nothing isolated: no table, no conntrack cost
        live = servers.connect("default/client2", web)
        assert live is not None and echoes(live)
        stack.callback(live.close)

        # Example 1: only run=client1 reaches app=web on TCP 80; client2 times out.
        apply(cli, lab, tmp_path, ACCESS_WEB, "access-web")
        assert eventually(lambda: not servers.reaches("default/client2", web))
        assert servers.reaches("default/client1", web)
        assert not servers.reaches("test/other", web)
        assert servers.reaches("default/web", other)  # egress is not isolated
        # The live connection client2 opened before stops passing at once.
        live.settimeout(1.0)
        assert not echoes(live)

        # Example 2 beside it: default takes nothing from other namespaces, talks inside.
        apply(cli, lab, tmp_path, DENY_OTHER_NAMESPACES, "deny-other")
        assert eventually(lambda: servers.reaches("default/client2", web))  # union
        assert not servers.reaches("test/other", web)
        assert servers.reaches("default/client1", other)  # test is not isolated

        # A connection the policies allow keeps working when they are deleted.
        kept = servers.connect("default/client1", web)
        assert kept is not None and echoes(kept)
        stack.callback(kept.close)

        # Deleting both: every pod open again, the table gone.
        cli("--lab", lab.name, "delete", "networkpolicy", "access-web", "-n", "default")
        cli("--lab", lab.name, "delete", "networkpolicy", "deny-from-other-namespaces",
            "-n", "default")
        assert eventually(lambda: servers.reaches("test/other", web))
        assert eventually(lambda: not has_table(lab, "node1"))
        assert echoes(kept)


@pytest.mark.parametrize("turned_on", ["at lab up", "later"])
def test_denied_packets_are_logged_and_shown_by_lab_flows(make_lab, cli, tmp_path, turned_on):
    lab = make_lab(2, via_cli=True, cli_args=("--log",) if turned_on == "at lab up" else ())
    if turned_on == "later":
        refused = cli("lab", "flows", "--name", lab.name)
        assert refused.returncode == 1 and "gingham lab log on" in refused.stderr
        done = cli("lab", "log", "on", "--name", lab.name)
        assert done.stdout.splitlines() == ["node1: denied packets logged",
                                            "node2: denied packets logged"], done.stderr
    web = lab.add_pod("node1", "default/web", labels={"app": "web"}).ip
    lab.add_pod("node2", "default/client2", labels={"run": "client2"})
    with ExitStack() as stack:
        servers = EchoServers(lab, ["default/web"], stack)
        apply(cli, lab, tmp_path, ACCESS_WEB, "access-web")
        assert eventually(lambda: not servers.reaches("default/client2", web))

        def logged() -> list[dict]:
            return json.loads(cli("lab", "flows", "--name", lab.name, "--json").stdout)

        assert eventually(lambda: any(f["srcPod"] == "default/client2" for f in logged()))
        flow = next(f for f in logged() if f["srcPod"] == "default/client2")
        assert (flow["node"], flow["dstPod"], flow["protocol"], flow["port"],
                flow["direction"], flow["pod"], flow["policies"]) == (
            "node1", "default/web", "TCP", PORT, "ingress", "default/web", "access-web")
        text = cli("lab", "flows", "--name", lab.name).stdout
        assert "default/client2 -> default/web TCP/80 denied: ingress of default/web " \
               "(access-web)" in text
