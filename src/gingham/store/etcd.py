"""etcd v3 through its JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/lease/*`,
`/v3/watch`), with the standard library's http.client.

The Python etcd libraries are abandoned (etcd3), break silently when etcd restarts
(etcd3gw), or bring gRPC, which does not mix with the agent's netns threads. The gateway
speaks proto3 JSON: 64-bit integers are strings, bytes are base64, and false/zero fields
are left out (a failed txn has no `succeeded`, an expired lease no `TTL`).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from gingham.store.contract import (
    DELETE,
    PUT,
    Compacted,
    Event,
    KeyValue,
    LeaseNotFound,
    StoreError,
    StoreStalled,
    StoreUnavailable,
)

REQUEST_TIMEOUT = 5.0
# clientv3's WithRequireLeader, through the gateway's metadata headers: a member cut off
# from the quorum answers "no leader" (503: ask another member) at once instead of timing
# out, and cancels a watch of ours instead of letting it go silent.
HEADERS = {"Content-Type": "application/json", "Grpc-Metadata-hasleader": "true"}
# A watch check must not wait the full request timeout on the member it suspects.
CHECK_TIMEOUT = 2.0


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _prefix_end(prefix: str) -> bytes:
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"  # the whole keyspace
    raw[-1] += 1
    return bytes(raw)


@dataclass(frozen=True)
class Endpoint:
    url: str
    host: str
    port: int
    tls: bool


@dataclass(frozen=True)
class TlsFiles:
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None


def parse_endpoints(urls: list[str]) -> list[Endpoint]:
    endpoints = []
    for url in urls:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"etcd endpoint {url!r} is not http(s)://HOST:PORT")
        endpoints.append(Endpoint(url.strip(), parts.hostname,
                                  parts.port or 2379, parts.scheme == "https"))
    if not endpoints:
        raise ValueError("no etcd endpoints given")
    return endpoints


class EtcdStore:
    def __init__(self, endpoints: list[str], tls: TlsFiles | None = None,
                 timeout: float = REQUEST_TIMEOUT) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self._ssl = self._ssl_context(tls or TlsFiles()) \
            if any(e.tls for e in self.endpoints) else None
        self._preferred = 0
        self._local = threading.local()
        self._watches: set[EtcdWatch] = set()
        self._lock = threading.Lock()

    @staticmethod
    def _ssl_context(tls: TlsFiles) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=tls.cafile)
            if tls.certfile:
                ctx.load_cert_chain(tls.certfile, tls.keyfile)
        except (OSError, ssl.SSLError) as err:
            raise StoreUnavailable(f"cannot load etcd TLS files: {err}") from err
        return ctx

    # -- transport ----------------------------------------------------------------------

    def connect(self, endpoint: Endpoint, timeout: float | None) -> http.client.HTTPConnection:
        if endpoint.tls:
            return http.client.HTTPSConnection(endpoint.host, endpoint.port, timeout=timeout,
                                               context=self._ssl)
        return http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)

    def _conn(self, index: int) -> http.client.HTTPConnection:
        conns = self._local.__dict__.setdefault("conns", {})
        if index not in conns:
            conns[index] = self.connect(self.endpoints[index], self.timeout)
        return conns[index]

    def _drop(self, index: int) -> None:
        conn = self._local.__dict__.get("conns", {}).pop(index, None)
        if conn is not None:
            conn.close()

    def order(self) -> list[int]:
        """Endpoint indices, the last one that answered first."""
        n = len(self.endpoints)
        return [(self._preferred + i) % n for i in range(n)]

    def _exchange(self, index: int, path: str, body: dict,
                  timeout: float | None = None) -> tuple[int, bytes]:
        """One request on the endpoint's kept-alive connection. A connection etcd closed
        while it sat idle (etcd restarted, or dropped it) fails at once when reused: that
        gets one retry on a fresh connection instead of counting as the endpoint down."""
        reused = index in self._local.__dict__.get("conns", {})
        while True:
            try:
                conn = self._conn(index)
                conn.timeout = timeout or self.timeout
                if conn.sock is not None:
                    conn.sock.settimeout(conn.timeout)
                conn.request("POST", path, json.dumps(body),
                             HEADERS)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException) as err:
                self._drop(index)
                # A timeout is a slow endpoint, not a stale connection: no second wait.
                if not reused or isinstance(err, TimeoutError):
                    raise
                reused = False  # the retry is on a fresh connection

    def call(self, path: str, body: dict, timeout: float | None = None) -> dict:
        failures = []
        silent = True  # every endpoint let the time run out rather than saying no
        for index in self.order():
            try:
                status, data = self._exchange(index, path, body, timeout)
            except (OSError, http.client.HTTPException) as err:
                failures.append(f"{self.endpoints[index].url}: {describe(err)}")
                silent = silent and isinstance(err, TimeoutError)
                continue
            if status == 503:  # a member without quorum: ask another
                failures.append(f"{self.endpoints[index].url}: {data[:200]!r}")
                silent = False
                continue
            self._preferred = index
            try:
                answer = json.loads(data)
            except ValueError as err:
                raise StoreError(f"etcd answered {path} with non-JSON: {data[:200]!r}") from err
            if status != 200:
                raise StoreError(f"etcd {path}: {answer.get('message') or answer}")
            return answer
        why = "no etcd endpoint answered: " + "; ".join(failures)
        raise StoreStalled(why) if silent else StoreUnavailable(why)

    # -- kv -----------------------------------------------------------------------------

    @staticmethod
    def _kv(raw: dict) -> KeyValue:
        return KeyValue(
            key=_unb64(raw["key"]).decode(),
            value=_unb64(raw.get("value")),
            create_revision=int(raw.get("create_revision", 0)),
            mod_revision=int(raw.get("mod_revision", 0)),
            lease=int(raw.get("lease", 0)),
        )

    def get(self, key: str) -> KeyValue | None:
        kvs = self.call("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        return self._kv(kvs[0]) if kvs else None

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        answer = self.call("/v3/kv/range",
                           {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))})
        return ([self._kv(kv) for kv in answer.get("kvs", [])],
                int(answer["header"]["revision"]))

    @staticmethod
    def _put(key: str, value: bytes, lease: int) -> dict:
        req: dict = {"key": _b64(key), "value": _b64(value)}
        if lease:
            req["lease"] = str(lease)
        return req

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        answer = self._checked("/v3/kv/put", self._put(key, value, lease))
        return int(answer["header"]["revision"])

    def delete(self, key: str) -> bool:
        return int(self.call("/v3/kv/deleterange", {"key": _b64(key)}).get("deleted", 0)) > 0

    def _txn_if_mod(self, key: str, mod_revision: int, op: dict,
                    guard: tuple[str, int] | None = None) -> bool:
        compares = [(key, mod_revision), *([guard] if guard else [])]
        answer = self._checked("/v3/kv/txn", {
            "compare": [{"key": _b64(k), "target": "MOD", "result": "EQUAL",
                         "mod_revision": str(rev)} for k, rev in compares],
            "success": [op],
        })
        return bool(answer.get("succeeded", False))

    def compare_and_swap(self, key: str, value: bytes, mod_revision: int,
                         lease: int = 0, guard: tuple[str, int] | None = None) -> bool:
        return self._txn_if_mod(key, mod_revision, {"request_put": self._put(key, value, lease)},
                                guard)

    def compare_and_delete(self, key: str, mod_revision: int) -> bool:
        return self._txn_if_mod(key, mod_revision,
                                {"request_delete_range": {"key": _b64(key)}})

    def _checked(self, path: str, body: dict) -> dict:
        try:
            return self.call(path, body)
        except StoreError as err:
            if "lease not found" in str(err):
                raise LeaseNotFound(str(err)) from err
            raise

    # -- leases -------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        return int(self.call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def keepalive(self, lease: int) -> int:
        answer = self.call("/v3/lease/keepalive", {"ID": str(lease)}).get("result", {})
        ttl = int(answer.get("TTL", 0))
        if ttl <= 0:
            raise LeaseNotFound(f"lease {lease:x} not found")
        return ttl

    def revoke(self, lease: int) -> None:
        try:
            self.call("/v3/lease/revoke", {"ID": str(lease)})
        except StoreError as err:
            if "lease not found" not in str(err):
                raise

    def probe(self) -> None:
        # What `etcdctl endpoint health` asks: a linearizable read, which needs a quorum as a
        # write does (a serializable one would answer from a member cut off from the rest).
        self.call("/v3/kv/range", {"key": _b64("health"), "count_only": True})

    # -- watch --------------------------------------------------------------------------

    def watch_check(self, prefix: str, after_revision: int) -> tuple[int, int]:
        # One txn, so both reads see one revision: the count, and the oldest key modified
        # past after_revision (keys only, at most one).
        whole = {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}
        answer = self.call("/v3/kv/txn", {"success": [
            {"request_range": {**whole, "count_only": True}},
            {"request_range": {**whole, "keys_only": True, "limit": "1",
                               "min_mod_revision": str(after_revision + 1),
                               "sort_order": "ASCEND", "sort_target": "MOD"}}]},
            timeout=CHECK_TIMEOUT)
        counted, oldest = (r.get("response_range", {}) for r in answer.get("responses", []))
        kvs = oldest.get("kvs", [])
        return int(counted.get("count", 0)), int(kvs[0]["mod_revision"]) if kvs else 0

    def watch(self, prefix: str, start_revision: int) -> EtcdWatch:
        watch = EtcdWatch(self, prefix, start_revision)
        with self._lock:
            self._watches.add(watch)
        return watch

    def forget(self, watch: EtcdWatch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def close(self) -> None:
        with self._lock:
            watches = list(self._watches)
        for watch in watches:
            watch.cancel()
        for index in list(self._local.__dict__.get("conns", {})):
            self._drop(index)


class EtcdWatch:
    """One streaming watch request; cancel() shuts its socket down from any thread."""

    rereads = False

    def __init__(self, store: EtcdStore, prefix: str, start_revision: int) -> None:
        self.store, self.prefix, self.start_revision = store, prefix, start_revision
        self._cancelled = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._url = ""  # the endpoint streaming, for error messages

    def cancel(self) -> None:
        self._cancelled.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def _open(self) -> http.client.HTTPResponse:
        body = json.dumps({"create_request": {
            "key": _b64(self.prefix), "range_end": _b64(_prefix_end(self.prefix)),
            "start_revision": str(self.start_revision)}})
        failures = []
        for index in self.store.order():
            endpoint = self.store.endpoints[index]
            conn = self.store.connect(endpoint, self.store.timeout)
            try:
                conn.request("POST", "/v3/watch", body, HEADERS)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as err:
                conn.close()
                failures.append(f"{endpoint.url}: {describe(err)}")
                continue
            if resp.status != 200:
                conn.close()
                failures.append(f"{endpoint.url}: HTTP {resp.status}")
                continue
            assert conn.sock is not None
            conn.sock.settimeout(None)  # a watch may be quiet for hours
            self._conn, self._url = conn, endpoint.url
            return resp
        raise StoreUnavailable("no etcd endpoint accepted a watch: " + "; ".join(failures))

    def __iter__(self) -> Iterator[Event]:
        try:
            if self._cancelled.is_set():
                return
            resp = self._open()
            if self._cancelled.is_set():
                return
            yield from self._read(resp)
        finally:
            if self._conn is not None:
                self._conn.close()
            self.store.forget(self)

    def _read(self, resp: http.client.HTTPResponse) -> Iterator[Event]:
        while True:
            try:
                line = resp.readline()
            except (OSError, http.client.HTTPException, ValueError) as err:
                if self._cancelled.is_set():
                    return
                raise StoreUnavailable(f"watch stream from {self._url} broke: "
                                       f"{describe(err)}") from err
            if not line:
                if self._cancelled.is_set():
                    return
                raise StoreUnavailable(f"etcd {self._url} closed the watch stream")
            if not line.strip():
                continue
            message = json.loads(line)
            if "error" in message:
                raise StoreUnavailable(f"watch on {self._url} failed: {message['error']}")
            result = message.get("result", {})
            if result.get("compact_revision") and result.get("canceled"):
                raise Compacted(int(result["compact_revision"]))
            for raw in result.get("events", []):
                kv = raw["kv"]
                yield Event(
                    type=DELETE if raw.get("type") == "DELETE" else PUT,
                    key=_unb64(kv["key"]).decode(),
                    value=_unb64(kv.get("value")),
                    revision=int(kv["mod_revision"]),
                )


# TLS alerts a server sends when it does not accept the client's certificate (or none).
CLIENT_CERT_REFUSED = ("BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "UNKNOWN_CA",
                       "CERTIFICATE_UNKNOWN")


def describe(err: BaseException) -> str:
    # OpenSSL's reason codes alone (SSLV3_ALERT_BAD_CERTIFICATE) do not say whose
    # certificate is wrong; say which side to look at.
    if isinstance(err, ssl.SSLCertVerificationError):
        return (f"TLS: etcd's server certificate is not trusted ({err.verify_message}; "
                "check the CA file)")
    # TLS 1.3 checks the client's certificate after the client's side of the handshake is
    # done: a refusal arrives as an alert, or as a bare EOF when the close wins the race.
    # One message for both, so a retrying agent logs it once.
    if isinstance(err, ssl.SSLEOFError) or (
            isinstance(err, ssl.SSLError)
            and any(alert in (err.reason or "") for alert in CLIENT_CERT_REFUSED)):
        return ("TLS: etcd did not accept the client certificate (none given, or not "
                "signed by etcd's CA)")
    if isinstance(err, ssl.SSLError):
        return f"TLS: {err.reason or err}"
    return str(err) or type(err).__name__
