"""Running real etcd members (Debian's etcd-server) for labs and tests, and TLS material
for them made with the openssl command."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gingham.lab import procs
from gingham.store.contract import StoreError
from gingham.store.etcd import EtcdStore, TlsFiles

ETCD = "/usr/bin/etcd"
READY_TIMEOUT = 20.0


@dataclass(frozen=True)
class EtcdMember:
    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    tls: bool = False

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"


@dataclass(frozen=True)
class EtcdTls:
    """Paths of a CA and of certificates it signed, for etcd's server side and a client."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_files(self) -> TlsFiles:
        return TlsFiles(str(self.ca), str(self.client_cert), str(self.client_key))


def etcd_argv(member: EtcdMember, cluster: list[EtcdMember], tls: EtcdTls | None) -> list[str]:
    argv = [
        ETCD, "--name", member.name, "--data-dir", str(member.data_dir),
        "--listen-client-urls", member.client_url,
        "--advertise-client-urls", member.client_url,
        "--listen-peer-urls", member.peer_url,
        "--initial-advertise-peer-urls", member.peer_url,
        "--initial-cluster", ",".join(f"{m.name}={m.peer_url}" for m in cluster),
        "--initial-cluster-state", "new",
        "--initial-cluster-token", f"gingham-{cluster[0].name}",
        # A small lab: fast elections, quiet logs.
        "--heartbeat-interval", "50", "--election-timeout", "500",
        "--log-level", "warn", "--logger", "zap",
    ]
    if tls is not None:
        argv += ["--cert-file", str(tls.server_cert), "--key-file", str(tls.server_key),
                 "--trusted-ca-file", str(tls.ca), "--client-cert-auth"]
    return argv


def start_member(member: EtcdMember, cluster: list[EtcdMember], log: Path,
                 netns: str | None = None, tls: EtcdTls | None = None) -> subprocess.Popen:
    member.data_dir.mkdir(parents=True, exist_ok=True)
    argv = etcd_argv(member, cluster, tls)
    with open(log, "ab") as out:
        kwargs = dict(stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        if netns is None:
            return subprocess.Popen(argv, **kwargs)
        return procs.popen_in(netns, argv, **kwargs)


def wait_ready(client_urls: list[str], proc: subprocess.Popen | None = None,
               tls: EtcdTls | None = None, timeout: float = READY_TIMEOUT) -> None:
    """Until a read through the gateway succeeds (leader elected, gateway up)."""
    store = EtcdStore(client_urls, tls.client_files() if tls else None, timeout=1.0)
    deadline = time.monotonic() + timeout
    last = ""
    try:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise StoreError(f"etcd exited with status {proc.returncode}")
            try:
                store.range("/health-probe/")
                return
            except StoreError as err:
                last = str(err)
                time.sleep(0.1)
    finally:
        store.close()
    raise StoreError(f"etcd not ready after {timeout:.0f}s: {last}")


def make_tls(directory: Path, server_ips: list[str]) -> EtcdTls:
    """A throwaway CA, a server certificate for `server_ips` and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    tls = EtcdTls(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem",
                  directory / "client.pem", directory / "client-key.pem")
    ca_key = directory / "ca-key.pem"

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(ca_key), "-out", str(tls.ca), "-days", "2",
            "-subj", "/CN=gingham-test-ca")
    sans = ",".join(f"IP:{ip}" for ip in server_ips)
    for cert, key, cn, ext in (
        (tls.server_cert, tls.server_key, "etcd", f"subjectAltName={sans}"),
        (tls.client_cert, tls.client_key, "gingham-agent", "extendedKeyUsage=clientAuth"),
    ):
        csr, extfile = cert.with_suffix(".csr"), cert.with_suffix(".ext")
        extfile.write_text(ext + "\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(tls.ca), "-CAkey", str(ca_key),
                "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extfile))
    return tls
