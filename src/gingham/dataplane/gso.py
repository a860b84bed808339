"""Segmentation and coalescing of IPv4 TCP in userspace, for a TUN device opened with a
virtio-net header (IFF_VNET_HDR): what the kernel's GSO and GRO do for a NIC.

Read from the device, a frame is the 10-byte header and one packet: either a TCP "super
packet" of up to 64 KB (gso_type TCPV4, to be cut into gso_size payloads), or one packet
whose transport checksum may still be to fill in (NEEDS_CSUM: the field holds the
pseudo-header sum; the sum from csum_start on goes there, complemented). `outbound`
turns a frame into wire-ready packets, every checksum valid, as a kernel would send them.

Written to the device, consecutive TCP segments of one flow become one super packet again
(`Coalescer`), so the kernel handles one skb instead of forty.

Checksums: the ones'-complement sum of 16-bit words is the number the bytes spell, modulo
0xFFFF (2**16 is 1 modulo 0xFFFF), which `int.from_bytes` and `%` compute in C.
"""

from __future__ import annotations

import struct

VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_LEN = VNET.size
NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_ECN = 0, 1, 0x80
PLAIN = bytes(VNET_LEN)  # a packet that carries its own checksums
IPV4_TCP = 6
MAX_IP_LEN = 0xFFFF
FIN, PSH, ACK, CWR = 0x01, 0x08, 0x10, 0x80
IP_FIXED = struct.Struct("!BBHHHBBH4s4s")
TCP_FIXED = struct.Struct("!HHIIBBHHH")
HEADERS = struct.Struct(IP_FIXED.format + TCP_FIXED.format[1:])
U16 = struct.Struct("!H")
SEQ = struct.Struct("!I")
IP_ID_SUM = struct.Struct("!HH")  # total length, id
VECTOR_MIN = 16  # spans from which span_sums goes to numpy


class FrameError(ValueError):
    """A frame the kernel would never hand over: cut short, or an offload not asked for."""


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The ones'-complement sum of `data` modulo 0xFFFF (an odd length padded with a zero
    byte); sums of even-length pieces add up."""
    n = int.from_bytes(data, "big")
    return (n << 8 if len(data) & 1 else n) % 0xFFFF


def complement(total: int) -> int:
    """The checksum field that makes a sum of `total` check: never 0 (UDP's "none")."""
    return 0xFFFF - total % 0xFFFF


def pseudo_sum(packet: bytes | bytearray | memoryview, protocol: int, length: int) -> int:
    """The IPv4 pseudo-header's sum: both addresses, the protocol, the transport length."""
    return ones_sum(packet[12:20]) + protocol + length


def outbound(frame: memoryview, out: bytearray) -> tuple[memoryview, int]:
    """The packets one TUN frame stands for, back to back (in `frame` itself or in `out`),
    and the size of each but the last, which may be shorter."""
    if len(frame) < VNET_LEN + 20:
        raise FrameError("frame shorter than a header and an IPv4 header")
    flags, gso_type, _, gso_size, csum_start, csum_offset = VNET.unpack_from(frame)
    packet = frame[VNET_LEN:]
    if gso_type & ~GSO_ECN == GSO_TCPV4:
        return segment_tcp4(packet, gso_size, out)
    if gso_type != GSO_NONE:
        raise FrameError(f"gso_type {gso_type} was not offered to the kernel")
    if flags & NEEDS_CSUM:
        fill_checksum(packet, csum_start, csum_offset)
    return packet, len(packet)


def fill_checksum(packet: memoryview, start: int, offset: int) -> None:
    """Complete a NEEDS_CSUM packet in place: its field holds the pseudo-header sum."""
    if start + offset + 2 > len(packet):
        raise FrameError("checksum field beyond the packet")
    U16.pack_into(packet, start + offset, complement(ones_sum(packet[start:])))


def segment_tcp4(packet: memoryview, mss: int, out: bytearray) -> tuple[memoryview, int]:
    """Cut a TCP super packet into segments of `mss` payload bytes in `out`, as the kernel's
    TSO does: IP id counting up, sequence numbers advancing, FIN/PSH on the last segment
    only, CWR on the first only, both checksums computed."""
    import numpy as np  # here, not at the top: only the userspace engines pay for numpy

    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 20:
        raise FrameError("TCP super packet cut short in its headers")
    thl = (packet[ihl + 12] >> 4) * 4
    hlen = ihl + thl
    if mss <= 0 or len(packet) <= hlen or ihl < 20 or thl < 20:
        raise FrameError("TCP super packet without headers, payload or segment size")
    (ver_ihl, tos, _, ip_id, frag, ttl, proto, _, src, dst) = IP_FIXED.unpack_from(packet)
    (sport, dport, seq, ack, offset, flags, window, _, urgent) = TCP_FIXED.unpack_from(
        packet, ihl)
    payload = packet[hlen:]
    total = len(payload)
    count = -(-total // mss)
    full = total // mss  # segments of exactly mss bytes; a shorter last one may follow
    stride = hlen + mss
    if total + count * hlen > len(out):
        raise FrameError("super packet larger than the segment buffer")
    # Every segment at once, as rows `stride` apart in `out`: the headers' template, then
    # the fields that change; each checksum is a constant plus what changes.
    template = bytearray(packet[:hlen])
    IP_FIXED.pack_into(template, 0, ver_ihl, tos, 0, 0, frag, ttl, proto, 0, src, dst)
    TCP_FIXED.pack_into(template, ihl, sport, dport, 0, ack, offset, 0, window, 0, urgent)
    ip_const = ones_sum(template[:ihl])
    tcp_const = ones_sum(template[ihl:]) + pseudo_sum(packet, IPV4_TCP, thl)
    _rows(out, 0, hlen, stride, count)[:] = np.frombuffer(template, np.uint8)
    _rows(out, hlen, mss, stride, full)[:] = _rows(payload, 0, mss, mss, full)
    index = np.arange(count, dtype=np.int64)
    sizes = np.full(count, mss, np.int64)
    sizes[-1] = total - (count - 1) * mss
    ids = (ip_id + index) & 0xFFFF
    seqs = (seq + index * mss) & 0xFFFFFFFF
    each = np.full(count, flags & ~(CWR | FIN | PSH), np.int64)
    each[0] |= flags & CWR
    each[-1] |= flags & (FIN | PSH)
    data = np.zeros(count, np.int64)
    data[:full] = row_sums(payload, mss, full)
    if full < count:
        tail = payload[full * mss:]
        out[full * stride + hlen:full * stride + hlen + len(tail)] = tail
        data[-1] = ones_sum(tail)
    lengths = sizes + hlen
    _column(out, 2, ">u2", stride, count)[:] = lengths
    _column(out, 4, ">u2", stride, count)[:] = ids
    _column(out, 10, ">u2", stride, count)[:] = 0xFFFF - (ip_const + lengths + ids) % 0xFFFF
    _column(out, ihl + 4, ">u4", stride, count)[:] = seqs
    _column(out, ihl + 13, "u1", stride, count)[:] = each
    _column(out, ihl + 16, ">u2", stride, count)[:] = 0xFFFF - (
        tcp_const + sizes + (seqs >> 16) + (seqs & 0xFFFF) + each + data) % 0xFFFF
    return memoryview(out)[:(count - 1) * stride + hlen + int(sizes[-1])], stride


def _rows(buf, offset: int, width: int, stride: int, count: int):
    """`count` rows of `width` bytes of `buf`, `stride` apart from `offset`: a numpy view."""
    import numpy as np

    return np.ndarray((count, width), np.uint8, buf, offset, (stride, 1))


def _column(buf, offset: int, dtype: str, stride: int, count: int):
    """One header field of each row (`stride` apart from `offset`) as a numpy view."""
    import numpy as np

    return np.ndarray((count,), dtype, buf, offset, (stride,))


def row_sums(data, width: int, count: int):
    """The ones' sums (modulo 0xFFFF) of `count` consecutive `width`-byte pieces of `data`,
    each an odd length padded with a zero byte as `ones_sum` does: one numpy pass."""
    import numpy as np

    words = np.ndarray((count, width // 2), ">u2", data, 0, (width, 2))
    sums = words.sum(axis=1, dtype=np.int64)
    if width & 1:  # the odd last byte of each piece is a word's high byte
        sums += np.ndarray((count,), np.uint8, data, width - 1, (width,)).astype(np.int64) << 8
    return sums % 0xFFFF


def span_sums(data: bytes | bytearray | memoryview, spans: list[tuple[int, int]]) -> list[int]:
    """`ones_sum(data[start:end])` of every span: a numpy pass or two over `data`, or span
    by span for a few (numpy's ~40 us of set-up is worth it from ~16 packets on)."""
    if len(spans) < VECTOR_MIN:
        view = memoryview(data)
        return [ones_sum(view[start:end]) for start, end in spans]
    import numpy as np

    bounds = np.array(spans, np.int64)
    start, end = bounds[:, 0], bounds[:, 1]
    top = int(end.max())
    region = np.zeros(top + 4, np.uint8)  # zero-padded: a past-the-end index stays inside
    region[:top] = np.frombuffer(data, np.uint8, top)
    first = start // 2
    stop = first + (end - start) // 2  # the span's whole words
    words = np.zeros(len(spans), np.int64)
    for parity in (0, 1):  # spans starting at even offsets, then at odd ones
        chosen = (start & 1) == parity
        if chosen.any():
            # Native-order words: their sum is the big-endian one times 256 (mod 0xFFFF).
            native = region[parity:parity + 2 * (top // 2 + 1)].view("<u2")
            words[chosen] = _range_sums(native, first[chosen], stop[chosen])
    odd_byte = np.where((end - start) & 1, region[end - 1].astype(np.int64) << 8, 0)
    return ((words * 256 + odd_byte) % 0xFFFF).tolist()


def _range_sums(values, first, stop):
    """The sum of `values[first[i]:stop[i]]` for each i (numpy arrays), empty ranges 0."""
    import numpy as np

    bounds = np.column_stack((first, stop)).ravel()
    sums = np.add.reduceat(values, bounds, dtype=np.uint32)[0::2]  # < 2**32 for 64 KB
    return np.where(first < stop, sums, 0)


def tcp_checks(total: int, length: int) -> bool:
    """Whether an IPv4 TCP packet (no IP options) of `length` bytes checks, as the receiving
    kernel checks, given the ones' sum `total` of its bytes from the addresses on."""
    return (total + IPV4_TCP + length - 20) % 0xFFFF == 0


class Coalescer:
    """Turns the packets that arrived from the nodes into writes for the TUN device: runs of
    consecutive same-flow TCP segments (equal payloads, the last maybe shorter, sequence
    numbers contiguous, plain ACK or a closing PSH) become one super packet with a vnet
    header asking the kernel to fill in the checksum; anything else goes as it came.

    `verify`: check each segment's TCP checksum before the merge hides it (when no outer
    checksum covered the inner packet, as with IPIP); one that fails goes alone, and the
    kernel drops it as it drops any corrupt packet."""

    def __init__(self, verify: bool) -> None:
        self.verify = verify

    def writes(self, raw: bytearray, spans: list[tuple[int, int]]) -> list[list]:
        """The buffers of one writev per TUN write, for the packets at `spans` of `raw`."""
        view = memoryview(raw)
        writes: list[list] = []
        run: list[tuple[int, int]] = []  # (start, end) of the segments being merged
        key: tuple = ()
        mss = next_seq = length = 0
        checked = (span_sums(raw, [(start + 12, end) for start, end in spans]) if self.verify
                   else [None] * len(spans))
        for (start, end), total in zip(spans, checked, strict=True):
            segment = self._segment(raw, start, end, total)
            if segment is None:
                if run:
                    writes.append(self._merged(raw, view, run, length))
                    run = []
                writes.append([PLAIN, view[start:end]])
                continue
            pkey, hlen, seq, flags = segment
            n = end - start - hlen
            if run and not (pkey == key and seq == next_seq and n <= mss
                            and length + n <= MAX_IP_LEN):
                writes.append(self._merged(raw, view, run, length))
                run = []
            if not run:
                key, mss, length = pkey, n, hlen
            run.append((start, end))
            length += n
            next_seq = (seq + n) & 0xFFFFFFFF
            if n < mss or flags & PSH:
                writes.append(self._merged(raw, view, run, length))
                run = []
        if run:
            writes.append(self._merged(raw, view, run, length))
        return writes

    @staticmethod
    def _segment(raw: bytearray, start: int, end: int,
                 total: int | None) -> tuple[tuple, int, int, int] | None:
        """(what must match along a run, header length, seq, flags) of a TCP segment that
        may join a run; None for anything else (not TCP, IP options or a fragment, control
        flags, no payload, a length not the datagram's, a failed checksum). `total`: the
        ones' sum from the addresses on, when the checksum is to be verified."""
        if end - start < 40:
            return None
        (ver_ihl, tos, length, _, frag, ttl, proto, _, src, dst, sport, dport, seq, ack,
         offset, flags, window, _, urgent) = HEADERS.unpack_from(raw, start)
        hlen = 20 + (offset >> 4) * 4
        if (ver_ihl != 0x45 or proto != IPV4_TCP or frag & 0x3FFF or length != end - start
                or flags & ~PSH != ACK or hlen < 40 or length <= hlen):
            return None
        if total is not None and not tcp_checks(total, end - start):
            return None
        key = (tos, ttl, src, dst, sport, dport, ack, offset, window, urgent,
               raw[start + 40:start + hlen])
        return key, hlen, seq, flags

    @staticmethod
    def _merged(raw: bytearray, view: memoryview, run: list[tuple[int, int]],
                length: int) -> list:
        """The writev buffers of one run: a lone segment as it came, else a vnet header
        (TCPV4, gso_size the first payload), the first header fixed up, every payload."""
        start, end = run[0]
        if len(run) == 1:
            return [PLAIN, view[start:end]]
        hlen = 20 + (raw[start + 32] >> 4) * 4
        header = raw[start:start + hlen]
        U16.pack_into(header, 2, length)
        U16.pack_into(header, 10, 0)
        U16.pack_into(header, 10, complement(ones_sum(header[:20])))
        header[33] = raw[run[-1][0] + 33]  # the last segment's PSH
        # NEEDS_CSUM: the field holds the pseudo-header sum, the kernel adds the rest.
        U16.pack_into(header, 36, pseudo_sum(header, IPV4_TCP, length - 20) % 0xFFFF or 0xFFFF)
        vnet = VNET.pack(NEEDS_CSUM, GSO_TCPV4, hlen, end - start - hlen, 20, 16)
        return [vnet, header, *(view[s + hlen:e] for s, e in run)]
