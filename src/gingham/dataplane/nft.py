"""nftables through libnftables' JSON interface (the library behind `nft -j`).

Bound with ctypes: Debian's python3-nftables is built for the system interpreter, not our
venv, and the binding is a handful of calls. A context's netlink socket is bound in the
namespace it was made in, so it is never shared between threads. Making one costs more than
a small transaction (4-10 ms against 0.2), so each thread keeps one for the namespace the
process started in (an agent's node); a thread visiting another namespace (tests, the lab)
makes one per call, since a kept socket would keep that namespace alive after its removal.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import json
import os
import threading

NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_HANDLE = 1 << 3
NFT_CTX_OUTPUT_JSON = 1 << 4


class NftError(RuntimeError):
    pass


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as err:
        raise NftError(
            "libnftables is not installed (Debian package libnftables1); run `make setup`"
        ) from err
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


_lib: ctypes.CDLL | None = None
_kept = threading.local()
_HOME_NETNS = os.stat("/proc/thread-self/ns/net").st_ino


def _new_context(lib: ctypes.CDLL) -> int:
    ctx = lib.nft_ctx_new(NFT_CTX_DEFAULT)
    lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_HANDLE)
    lib.nft_ctx_buffer_output(ctx)
    lib.nft_ctx_buffer_error(ctx)
    return ctx


def run(commands: list[dict]) -> list[dict]:
    """Apply `commands` (the `nftables` array of nft's JSON schema) as one atomic transaction
    and return the objects nft printed back (for `list` commands)."""
    global _lib
    if _lib is None:
        _lib = _load()
    home = os.stat("/proc/thread-self/ns/net").st_ino == _HOME_NETNS
    ctx = getattr(_kept, "ctx", None) if home else None
    if ctx is None:
        ctx = _new_context(_lib)
    try:
        rc = _lib.nft_run_cmd_from_buffer(ctx, json.dumps({"nftables": commands}).encode())
        # Reading a buffer empties it for the next transaction on the context.
        out = (_lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
        err = (_lib.nft_ctx_get_error_buffer(ctx) or b"").decode().strip()
    finally:
        if home:
            _kept.ctx = ctx
        else:
            _lib.nft_ctx_free(ctx)
    if rc != 0:
        raise NftError(err or f"nft transaction failed ({rc})")
    return json.loads(out)["nftables"] if out.strip() else []


def network(net: ipaddress.IPv4Network) -> dict | str:
    """A network as nft's JSON writes it: an address alone for a /32, else a prefix."""
    if net.prefixlen == 32:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def list_table(family: str, name: str) -> list[dict] | None:
    """The table's objects, or None if there is no such table."""
    try:
        return run([{"list": {"table": {"family": family, "name": name}}}])
    except NftError as err:
        if "No such file" in str(err):
            return None
        raise
