"""The userspace tunnels' per-buffer work (dataplane/tunnel_loops.c): every segment cut from
a super packet checks by an independent, word-by-word checksum, and merging gives back the
original stream."""

from __future__ import annotations

import random
import socket
import struct

import pytest

from gingham.dataplane import tunnel_loops

pytestmark = pytest.mark.unit
SRC, DST = socket.inet_aton("10.244.2.3"), socket.inet_aton("10.244.1.2")
TIMESTAMPS = bytes([1, 1, 8, 10]) + bytes(range(8))  # NOP NOP TS: a 32-byte TCP header
VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_LEN = VNET.size
PLAIN = bytes(VNET_LEN)
NEEDS_CSUM, GSO_NONE, GSO_TCPV4 = 1, 0, 1
FIN, SYN, PSH, ACK, CWR = 0x01, 0x02, 0x08, 0x10, 0x80


def outbound(frame: memoryview, out: bytearray) -> tuple[memoryview, int]:
    """The wire packets of one TUN frame, back to back, and the size of each but the last."""
    in_out, length, size = tunnel_loops.outbound(frame, out)
    return (memoryview(out)[:length] if in_out else frame[VNET_LEN:VNET_LEN + length]), size


def slow_checksum(data: bytes) -> int:
    """RFC 1071 the long way: 16-bit words, end-around carry, complement."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def checks(data: bytes) -> bool:
    return slow_checksum(data) in (0, 0xFFFF) and any(data)


def tcp_checks(packet: bytes) -> bool:
    ihl = (packet[0] & 0x0F) * 4
    segment = packet[ihl:]
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 6, len(segment))
    return checks(pseudo + segment)


def super_packet(payload: bytes, flags: int = ACK | PSH, seq: int = 0xFFFFF000,
                 ip_id: int = 0xFFF0, options: bytes = TIMESTAMPS) -> bytes:
    thl = 20 + len(options)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, (thl // 4) << 4, flags, 502, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + thl + len(payload), ip_id, 0x4000, 64,
                     6, 0, SRC, DST)
    return ip + tcp + options + payload


def frame(packet: bytes, mss: int) -> memoryview:
    hlen = 20 + (packet[32] >> 4) * 4
    vnet = VNET.pack(NEEDS_CSUM, GSO_TCPV4, hlen, mss, 20, 16)
    return memoryview(bytearray(vnet + packet))


def split(view: memoryview, size: int) -> list[bytes]:
    return [bytes(view[o:o + size]) for o in range(0, len(view), size)]


def test_ones_sum_agrees_with_the_word_by_word_sum_at_any_offset_and_length():
    data = random.Random(7).randbytes(70001)
    view = memoryview(data)
    for start in (0, 1, 2, 3, 7):
        for length in (*range(18), 1419, 1420, 65000):
            piece = view[start:start + length]
            assert (0xFFFF - tunnel_loops.ones_sum(piece)) % 0xFFFF == slow_checksum(
                bytes(piece)) % 0xFFFF


def test_a_64k_super_packet_becomes_mss_segments_that_each_check():
    payload = random.Random(1).randbytes(65000)
    packet = super_packet(payload, flags=ACK | PSH | FIN | CWR)
    view, size = outbound(frame(packet, 1420), bytearray(1 << 18))
    segments = split(view, size)
    assert len(segments) == 46 and size == 20 + 32 + 1420
    assert all(len(s) == size for s in segments[:-1]) and len(segments[-1]) <= size
    data = b""
    for i, seg in enumerate(segments):
        assert checks(seg[:20]), f"IP checksum of segment {i}"
        assert tcp_checks(seg), f"TCP checksum of segment {i}"
        total_len, ip_id = struct.unpack_from("!HH", seg, 2)
        seq, flags = struct.unpack_from("!I", seg, 24)[0], seg[33]
        assert total_len == len(seg) and ip_id == (0xFFF0 + i) & 0xFFFF
        assert seq == (0xFFFFF000 + len(data)) & 0xFFFFFFFF  # wraps past 2**32
        last = i == len(segments) - 1
        assert bool(flags & (FIN | PSH)) == last and bool(flags & CWR) == (i == 0)
        assert seg[40:52] == TIMESTAMPS
        data += seg[52:]
    assert data == payload


def test_an_odd_payload_and_a_short_last_segment_check():
    payload = random.Random(2).randbytes(3001)
    view, size = outbound(frame(super_packet(payload, options=b""), 1001),
                              bytearray(1 << 16))
    segments = split(view, size)
    assert [len(s) - 40 for s in segments] == [1001, 1001, 999]
    assert all(tcp_checks(s) and checks(s[:20]) for s in segments)


def test_a_packet_needing_its_checksum_gets_it():
    """A UDP packet as the kernel hands it with TUN_F_CSUM: the field holds the
    pseudo-header sum, the rest is to add."""
    data = b"ping over udp!!"
    length = 8 + len(data)
    pseudo = slow_checksum(SRC + DST + struct.pack("!BBH", 0, 17, length))
    udp = struct.pack("!HHHH", 5353, 53, length, ~pseudo & 0xFFFF) + data
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 1, 0, 64, 17, 0, SRC, DST)
    vnet = VNET.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6)
    view, size = outbound(memoryview(bytearray(vnet + ip + udp)), bytearray(0))
    packet = bytes(view)
    assert size == len(packet) == 20 + length
    assert checks(packet[12:20] + struct.pack("!BBH", 0, 17, length) + packet[20:])


def test_an_offload_never_asked_for_or_a_frame_cut_short_is_refused():
    vnet = VNET.pack(0, 5, 0, 1400, 0, 0)  # UDP_L4 GSO
    with pytest.raises(tunnel_loops.FrameError):
        outbound(memoryview(bytearray(vnet + bytes(40))), bytearray(0))
    packet = super_packet(b"x" * 3000)
    for cut in (30, 45, 52):  # inside the TCP header, its options, right after them
        with pytest.raises(tunnel_loops.FrameError):
            outbound(frame(packet, 1420)[:VNET_LEN + cut], bytearray(1 << 16))


def merge(packets: list[bytes], verify: bool = True) -> list[bytes]:
    """What the coalescer writes, each write joined, the vnet header first."""
    raw = bytearray(b"".join(packets))
    spans, o = [], 0
    for p in packets:
        spans.append((o, o + len(p)))
        o += len(p)
    return tunnel_loops.coalesce(raw, spans, verify)


def kernel_finish(write: bytes) -> bytes:
    """What the kernel makes of a NEEDS_CSUM write: the checksum filled in."""
    packet = memoryview(bytearray(write[VNET_LEN:]))
    flags, _, _, _, start, offset = VNET.unpack_from(write)
    if flags & NEEDS_CSUM:  # the field holds the pseudo-header sum
        struct.pack_into("!H", packet, start + offset, slow_checksum(bytes(packet[start:])))
    return bytes(packet)


def test_segments_merge_back_into_one_super_packet():
    payload = random.Random(3).randbytes(60000)
    view, size = outbound(frame(super_packet(payload), 1420), bytearray(1 << 18))
    writes = merge(split(view, size))
    assert len(writes) == 1
    flags, gso_type, hdr_len, gso_size, start, offset = VNET.unpack_from(writes[0])
    assert (flags, gso_type, hdr_len, gso_size, start, offset) == (
        NEEDS_CSUM, GSO_TCPV4, 52, 1420, 20, 16)
    packet = kernel_finish(writes[0])
    assert struct.unpack_from("!H", packet, 2)[0] == len(packet) == 52 + 60000
    assert checks(packet[:20]) and tcp_checks(packet)
    assert packet[52:] == payload and packet[33] == ACK | PSH
    assert struct.unpack_from("!I", packet, 24)[0] == 0xFFFFF000


def test_what_cannot_merge_goes_as_it_came():
    a = super_packet(b"x" * 100, flags=ACK, seq=1000)
    gap = super_packet(b"y" * 100, flags=ACK, seq=1200)  # 1100 missing
    syn = super_packet(b"", flags=SYN, seq=5)
    udp = bytes([0x45]) + bytes(8) + bytes([17]) + bytes(2) + SRC + DST + bytes(8)
    corrupt = bytearray(super_packet(b"z" * 100, flags=ACK, seq=1300))
    corrupt[-1] ^= 1
    packets = [gso_fixed(a), gso_fixed(gap), syn, udp, gso_fixed(bytes(corrupt), fix=False)]
    assert merge(packets) == [PLAIN + p for p in packets]


def test_without_verify_a_bad_checksum_is_left_to_the_kernel():
    first = gso_fixed(super_packet(b"a" * 100, flags=ACK, seq=0))
    second = bytearray(gso_fixed(super_packet(b"b" * 100, flags=ACK, seq=100)))
    second[-1] ^= 1
    assert len(merge([first, bytes(second)], verify=False)) == 1
    assert len(merge([first, bytes(second)], verify=True)) == 2


def gso_fixed(packet: bytes, fix: bool = True) -> bytes:
    """A lone packet with its checksums as a sender would set them."""
    out = bytearray(packet)
    struct.pack_into("!H", out, 10, slow_checksum(bytes(out[:20])))
    if fix:
        out[36:38] = b"\0\0"
        pseudo = out[12:20] + struct.pack("!BBH", 0, 6, len(out) - 20)
        struct.pack_into("!H", out, 36, slow_checksum(bytes(pseudo + out[20:])))
    return bytes(out)


def test_ip_options_are_kept_on_every_segment():
    packet = super_packet(random.Random(4).randbytes(5000), options=b"")
    ip_options = bytes([1, 1, 1, 0])  # NOP NOP NOP EOL
    ip = bytearray(packet[:20] + ip_options)
    ip[0] = 0x46
    struct.pack_into("!H", ip, 2, len(packet) + 4)
    with_options = bytes(ip) + packet[20:]
    vnet = VNET.pack(NEEDS_CSUM, GSO_TCPV4, 44, 1400, 24, 16)
    view, size = outbound(memoryview(bytearray(vnet + with_options)), bytearray(1 << 16))
    segments = split(view, size)
    assert len(segments) == 4 and all(s[20:24] == ip_options for s in segments)
    assert all(checks(s[:24]) and tcp_checks(s) for s in segments)
    assert b"".join(s[44:] for s in segments) == packet[40:]


def test_a_run_of_more_than_64_segments_goes_in_several_writes():
    payload = random.Random(9).randbytes(64000)
    view, size = outbound(frame(super_packet(payload), 900), bytearray(1 << 18))
    writes = merge(split(view, size))  # 72 segments
    assert [VNET.unpack_from(w)[1] for w in writes] == [GSO_TCPV4, GSO_TCPV4]
    packets = [kernel_finish(w) for w in writes]
    assert all(checks(p[:20]) and tcp_checks(p) for p in packets)
    assert b"".join(p[52:] for p in packets) == payload
