"""The CNI plugin executable: a thin forwarder to the node's gingham agent.

`gingham install-cni` writes this file, precompiled (see install.py), as `gingham` and
`gingham-ipam`, headed by a python with -IS (the venv's or the system's, whichever starts
faster: it needs only the standard library). A runtime execs it once per pod, so it
imports only modules that are built in or already loaded at start: `json` or `socket` alone
would double its start time, and even `os` costs ~1 ms (it pulls in `_collections_abc`), so
the environment comes from `posix`, which the interpreter has loaded before running us. It
never parses the config; it forwards the raw environment and stdin to the agent and prints
the agent's raw answer. VERSION is answered here, and the CNI_* variables are checked here
by the agent's rules, so a malformed call is code 4 whether or not the agent is up.
"""

import _socket
import posix
import sys

DEFAULT_SOCKET = b"/run/gingham/agent.sock"
VERSION_ANSWER = b'{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}'
# The variables each command needs, as the agent's gingham.cni.environment.REQUIRED (VERSION
# is answered here, before any check).
REQUIRED_ENV = {
    b"ADD": (b"CNI_CONTAINERID", b"CNI_NETNS", b"CNI_IFNAME", b"CNI_PATH"),
    b"CHECK": (b"CNI_CONTAINERID", b"CNI_NETNS", b"CNI_IFNAME", b"CNI_PATH"),
    b"DEL": (b"CNI_CONTAINERID", b"CNI_IFNAME", b"CNI_PATH"),
    b"STATUS": (),
    b"GC": (),
}
ID_PUNCTUATION = b"_.-"  # allowed in a container ID after its first character
ASCII_SPACE = bytes([*range(9, 14), *range(28, 33)])  # the ASCII characters str.isspace() sees
MAX_IFNAME = 15
FORWARDED_ENV = (b"CNI_COMMAND", b"CNI_CONTAINERID", b"CNI_NETNS", b"CNI_IFNAME", b"CNI_ARGS",
                 b"CNI_PATH")
WIRE_MAGIC = b"GINGHAM/1"
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
INVALID_ENVIRONMENT = 4
DECODING_FAILURE = 6


def string_field(data, key):
    """The value of the first `"key": "..."` in raw JSON, or None if absent or escaped."""
    at = data.find(b'"' + key + b'"')
    if at < 0:
        return None
    rest = data[at + len(key) + 2:].lstrip()
    if not rest.startswith(b":"):
        return None
    rest = rest[1:].lstrip()
    end = rest.find(b'"', 1)
    if not rest.startswith(b'"') or end < 0 or b"\\" in rest[1:end]:
        return None
    return rest[1:end]


def fail(code, msg, details, version):
    # Every byte but printable ASCII escaped: details may echo a variable holding control
    # characters or bytes that are not UTF-8, and the error object must stay valid JSON.
    details = b"".join(b"\\u%04x" % c if c < 32 or c > 126 or c in b'"\\' else bytes((c,))
                       for c in details)
    write_all(b'{"cniVersion":"%s","code":%d,"msg":"%s","details":"%s"}'
              % (version, code, msg, details))
    return 1


def env_problem(env, command):
    """(msg, details) of the agent's refusal of this environment, or None: the rules of
    gingham.cni.environment.parse_env, in its order and words, so that a call the agent
    would refuse gets code 4 even while the agent is down. Bytes only, no decoding."""
    if command not in REQUIRED_ENV:
        return b"CNI_COMMAND is missing or unknown", command
    missing = [key for key in REQUIRED_ENV[command] if not env.get(key)]
    if missing:
        return b"required environment variables missing: " + b", ".join(missing), b""
    container_id = env.get(b"CNI_CONTAINERID", b"")
    # [A-Za-z0-9][A-Za-z0-9_.-]*; bytes.isalnum() is ASCII-only, as the pattern is.
    if container_id and not (container_id[:1].isalnum()
                             and container_id.translate(None, ID_PUNCTUATION).isalnum()):
        return b"CNI_CONTAINERID has characters a container ID may not", container_id
    ifname = env.get(b"CNI_IFNAME", b"")
    if b"CNI_IFNAME" in REQUIRED_ENV[command] and bad_ifname(ifname):
        return b"CNI_IFNAME is not a valid interface name", ifname
    return None


def bad_ifname(name):
    if name in (b".", b"..") or b"/" in name or b":" in name:
        return True
    # The agent counts characters and knows Unicode spaces; bytes can show that only for an
    # ASCII name, so any other is left for the agent to judge.
    return name.isascii() and (len(name) > MAX_IFNAME
                               or len(name.translate(None, ASCII_SPACE)) != len(name))


def is_json_object(data):
    """Only on the failure path, where the agent cannot judge the config for us: the json
    import costs ~7 ms, too much for every call."""
    import json

    try:
        return isinstance(json.loads(data), dict)
    except ValueError:
        return False


def write_all(data):
    # Straight to fd 1: a pipe may take less than all of a large result in one write.
    view = memoryview(data)
    while view:
        view = view[posix.write(1, view):]


def main():
    env = posix.environ  # bytes to bytes, as os.environb
    command = env.get(b"CNI_COMMAND", b"")
    if command == b"VERSION":
        write_all(VERSION_ANSWER)
        return 0
    stdin = sys.stdin.buffer.read()
    version = string_field(stdin, b"cniVersion") or b"1.1.0"
    problem = env_problem(env, command)
    if problem is not None:
        return fail(INVALID_ENVIRONMENT, *problem, version)
    role = b"ipam" if sys.argv[0].endswith("-ipam") else b"main"
    fields = [b"%s=%s" % (key, env[key]) for key in FORWARDED_ENV if key in env]
    request = b"\0".join([WIRE_MAGIC, role, *fields]) + b"\0\0" + stdin
    path = string_field(stdin, b"agentSocket") or DEFAULT_SOCKET
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(300)
        sock.connect(path)
        sock.sendall(request)
        sock.shutdown(_socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        sock.close()
    except OSError as err:
        if not is_json_object(stdin):  # "try again later" would be wrong for a bad config
            return fail(DECODING_FAILURE, b"network config is not a JSON object", b"", version)
        code = PLUGIN_NOT_AVAILABLE if command == b"STATUS" else TRY_AGAIN_LATER
        return fail(code, b"gingham agent unreachable", path + b": " + str(err).encode(), version)
    reply = b"".join(chunks)
    status, _, body = reply.partition(b"\n")
    if not status.isdigit():
        code = PLUGIN_NOT_AVAILABLE if command == b"STATUS" else TRY_AGAIN_LATER
        return fail(code, b"gingham agent closed the call without an answer", path, version)
    write_all(body)
    return int(status)


if __name__ == "__main__":
    # Straight out, skipping the interpreter's teardown (~1 ms, an eighth of an ADD): all
    # output went to fd 1 unbuffered, and there is nothing else to flush or close.
    posix._exit(main())
