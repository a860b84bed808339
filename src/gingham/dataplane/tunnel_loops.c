/* The userspace tunnels' packet loops (udp, and IPIP where the kernel has no ipip module),
 * in C as flanneld's udp proxy is: at tens of thousands of packets a second the per-byte
 * work (segmenting, checksums, merging) and the per-packet bookkeeping cost Python several
 * core-seconds per gigabyte, which is the whole budget of a 2-core node.
 *
 * The TUN device is opened with a virtio-net header and TCPv4 segmentation offload
 * (dataplane/tun.py), so one read hands over a TCP "super packet" of up to 64 KB.
 * Outbound it is cut into MTU-sized segments as the kernel's TSO would (IP id counting
 * up, seq advancing, FIN/PSH on the last only, CWR on the first only, both checksums) and
 * sent in one UDP GSO send (UDP_SEGMENT) or one sendmmsg of raw IPIP packets. Inbound, a
 * UDP GRO receive or a recvmmsg batch is merged back: consecutive segments of one flow
 * become one write of a super packet whose checksum the kernel fills in. On the wire
 * every datagram or IPIP packet is one complete inner packet, as a kernel peer sends.
 *
 * The loops run with the GIL released, one thread per direction, until Table.stop().
 * The Table (subnet -> node, and the nodes allowed to send to us) is changed from Python
 * under its mutex; the loops take the mutex for one lookup at a time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define VNET_LEN 10
#define NEEDS_CSUM 1
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_ECN 0x80
#define MAX_PACKET 0xFFFF
#define MAX_DATAGRAM (0xFFFF - 28)   /* what one IPv4 UDP send may carry in all */
#define UDP_MAX_SEGMENTS 64          /* the kernel's limit of datagrams per GSO send */
#define SEGMENT_BUFFER (1 << 18)     /* a 64 KB super packet cut at the smallest MSS */
#define RECEIVE_BUFFER (1 << 18)     /* one GRO receive */
#define RAW_BATCH 64                 /* raw IPIP packets per recvmmsg */
#define RAW_SEND_BATCH 128           /* raw IPIP packets per sendmmsg */
#define MAX_RUN 64                   /* segments merged into one write at most */
#define SOL_UDP_ 17
#define UDP_SEGMENT_ 103
#define UDP_GRO_ 104
#define FIN 0x01
#define PSH 0x08
#define ACK 0x10
#define CWR 0x80

struct vnet_hdr {  /* linux/virtio_net.h, native byte order (legacy virtio on TUN) */
    uint8_t flags, gso_type;
    uint16_t hdr_len, gso_size, csum_start, csum_offset;
};

static PyObject *FrameError;
static PyTypeObject TableType;

/* ---- checksums ---------------------------------------------------------------------- */

static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline uint32_t fold(uint64_t s) {
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
    return (uint32_t)s;
}

/* The ones'-complement sum of the big-endian 16-bit words of p[0:n] (an odd length padded
 * with a zero byte), folded to 16 bits: 0xFFFF and 0 both stand for zero. Summed as native
 * 32-bit words (2**16 is 1 modulo 0xFFFF), then byte-swapped on a little-endian machine. */
static uint32_t sum16(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        s += (w & 0xFFFFFFFF) + (w >> 32);
    }
    for (; i + 2 <= n; i += 2) {
        uint16_t w;
        memcpy(&w, p + i, 2);
        s += w;
    }
    uint32_t r;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (i < n)
        s += p[i];  /* the padded word's high byte, which a little-endian load puts low */
    r = fold(s);
    r = (r >> 8 | r << 8) & 0xFFFF;
#else
    if (i < n)
        s += (uint32_t)p[i] << 8;
    r = fold(s);
#endif
    return r;
}

/* The checksum field that makes a sum of `total` check; never 0, UDP's "no checksum". */
static inline uint32_t complement(uint64_t total) {
    uint32_t f = fold(total);
    return f == 0xFFFF ? 0xFFFF : (~f & 0xFFFF);
}

static inline uint32_t pseudo_sum(const uint8_t *ip, uint32_t protocol, uint32_t length) {
    return sum16(ip + 12, 8) + protocol + length;
}

/* ---- outbound: a TUN frame into wire-ready packets ----------------------------------- */

enum frame_error {
    FRAME_OK, FRAME_SHORT, FRAME_OFFLOAD, FRAME_CSUM_FIELD, FRAME_TCP_SHORT, FRAME_TCP_EMPTY,
    FRAME_TOO_LARGE,
};
static const char *const frame_errors[] = {
    "", "frame shorter than a header and an IPv4 header",
    "gso_type %d was not offered to the kernel", "checksum field beyond the packet",
    "TCP super packet cut short in its headers",
    "TCP super packet without headers, payload or segment size",
    "super packet larger than the segment buffer",
};

/* Cut a TCP super packet into segments of `mss` payload bytes, `*stride` apart in `out`. */
static enum frame_error segment_tcp4(const uint8_t *pkt, size_t len, size_t mss, uint8_t *out,
                                     size_t cap, size_t *out_len, size_t *stride) {
    size_t ihl = (size_t)(pkt[0] & 0x0F) * 4;
    if (len < ihl + 20)
        return FRAME_TCP_SHORT;
    size_t thl = (size_t)(pkt[ihl + 12] >> 4) * 4;
    size_t hlen = ihl + thl;
    if (mss == 0 || len <= hlen || ihl < 20 || thl < 20)
        return FRAME_TCP_EMPTY;
    const uint8_t *payload = pkt + hlen;
    size_t total = len - hlen;
    size_t count = (total + mss - 1) / mss;
    if (total + count * hlen > cap)
        return FRAME_TOO_LARGE;
    uint8_t tmpl[120];  /* IP (<= 60) and TCP (<= 60) headers */
    memcpy(tmpl, pkt, hlen);
    uint32_t ip_id = get16(pkt + 4), seq = get32(pkt + ihl + 4), flags = pkt[ihl + 13];
    memset(tmpl + 2, 0, 4);       /* total length, id */
    memset(tmpl + 10, 0, 2);      /* IP checksum */
    memset(tmpl + ihl + 4, 0, 4); /* seq */
    tmpl[ihl + 13] = 0;           /* flags */
    memset(tmpl + ihl + 16, 0, 2); /* TCP checksum */
    uint64_t ip_const = sum16(tmpl, ihl);
    uint64_t tcp_const = sum16(tmpl + ihl, thl) + pseudo_sum(pkt, 6, (uint32_t)thl);
    *stride = hlen + mss;
    for (size_t i = 0; i < count; i++) {
        uint8_t *o = out + i * *stride;
        size_t size = i + 1 < count ? mss : total - i * mss;
        memcpy(o, tmpl, hlen);
        memcpy(o + hlen, payload + i * mss, size);
        uint32_t length = (uint32_t)(hlen + size), id = (ip_id + (uint32_t)i) & 0xFFFF;
        uint32_t s = seq + (uint32_t)(i * mss);
        uint32_t f = flags & ~(uint32_t)(CWR | FIN | PSH);
        if (i == 0)
            f |= flags & CWR;
        if (i + 1 == count)
            f |= flags & (FIN | PSH);
        put16(o + 2, length);
        put16(o + 4, id);
        put16(o + 10, complement(ip_const + length + id));
        put32(o + ihl + 4, s);
        o[ihl + 13] = (uint8_t)f;
        put16(o + ihl + 16, complement(tcp_const + size + (s >> 16) + (s & 0xFFFF) + f +
                                       sum16(o + hlen, size)));
    }
    *out_len = (count - 1) * *stride + hlen + (total - (count - 1) * mss);
    return FRAME_OK;
}

/* The packets a TUN frame stands for, back to back at *packets (in the frame or in `out`),
 * each *size long but the last. */
static enum frame_error outbound_frame(uint8_t *frame, size_t n, uint8_t *out, size_t cap,
                                       uint8_t **packets, size_t *len, size_t *size) {
    if (n < VNET_LEN + 20)
        return FRAME_SHORT;
    struct vnet_hdr h;
    memcpy(&h, frame, VNET_LEN);
    uint8_t *pkt = frame + VNET_LEN;
    size_t plen = n - VNET_LEN;
    if ((h.gso_type & ~GSO_ECN) == GSO_TCPV4) {
        *packets = out;
        return segment_tcp4(pkt, plen, h.gso_size, out, cap, len, size);
    }
    if (h.gso_type != GSO_NONE)
        return FRAME_OFFLOAD;
    if (h.flags & NEEDS_CSUM) {
        if ((size_t)h.csum_start + h.csum_offset + 2 > plen)
            return FRAME_CSUM_FIELD;
        put16(pkt + h.csum_start + h.csum_offset,
              complement(sum16(pkt + h.csum_start, plen - h.csum_start)));
    }
    *packets = pkt;
    *len = *size = plen;
    return FRAME_OK;
}

/* ---- inbound: merging segments back into super packets ------------------------------ */

struct span { size_t start, end; };

/* Writes one TUN write made of `n` buffers; returns nothing (a refused write is dropped). */
typedef void (*emit_fn)(void *ctx, struct iovec *iov, int n);

static const uint8_t PLAIN[VNET_LEN];

/* Whether raw[start:end] is a TCP segment that may join a run: plain IPv4 (no options, not
 * a fragment), its length the datagram's, ACK with at most PSH, some payload, and with
 * `verify` a TCP checksum that checks. */
static int mergeable(const uint8_t *p, size_t len, int verify) {
    if (len < 40 || p[0] != 0x45 || p[9] != 6 || (get16(p + 6) & 0x3FFF) || get16(p + 2) != len
        || (p[33] & ~PSH) != ACK)
        return 0;
    size_t hlen = 20 + (size_t)(p[32] >> 4) * 4;
    if (hlen < 40 || len <= hlen)
        return 0;
    return !verify || fold((uint64_t)sum16(p + 12, len - 12) + 6 + (len - 20)) == 0xFFFF;
}

/* Whether two mergeable segments belong to one run: every header field but the ones that
 * change per segment (length, id, IP checksum, seq, flags, TCP checksum) alike. */
static int same_flow(const uint8_t *a, const uint8_t *b) {
    size_t hlen = 20 + (size_t)(a[32] >> 4) * 4;
    return a[1] == b[1] && a[8] == b[8] && !memcmp(a + 12, b + 12, 12)  /* addrs, ports */
        && !memcmp(a + 28, b + 28, 5)                                     /* ack, offset */
        && !memcmp(a + 34, b + 34, 2) && !memcmp(a + 38, b + 38, hlen - 38);
}

static void emit_run(uint8_t *raw, const struct span *run, int count, size_t length,
                     emit_fn emit, void *ctx) {
    struct iovec iov[2 + MAX_RUN];
    const uint8_t *first = raw + run[0].start;
    if (count == 1) {
        iov[0] = (struct iovec){(void *)PLAIN, VNET_LEN};
        iov[1] = (struct iovec){(void *)first, run[0].end - run[0].start};
        emit(ctx, iov, 2);
        return;
    }
    size_t hlen = 20 + (size_t)(first[32] >> 4) * 4;
    uint8_t header[80];
    memcpy(header, first, hlen);
    put16(header + 2, (uint32_t)length);
    put16(header + 10, 0);
    put16(header + 10, complement(sum16(header, 20)));
    header[33] = raw[run[count - 1].start + 33];  /* the last segment's PSH */
    /* NEEDS_CSUM: the field holds the pseudo-header sum, the kernel adds the rest. */
    uint32_t pseudo = fold(pseudo_sum(header, 6, (uint32_t)(length - 20)));
    put16(header + 36, pseudo ? pseudo : 0xFFFF);
    struct vnet_hdr h = {NEEDS_CSUM, GSO_TCPV4, (uint16_t)hlen,
                         (uint16_t)(run[0].end - run[0].start - hlen), 20, 16};
    iov[0] = (struct iovec){&h, VNET_LEN};
    iov[1] = (struct iovec){header, hlen};
    for (int i = 0; i < count; i++)
        iov[2 + i] = (struct iovec){raw + run[i].start + hlen, run[i].end - run[i].start - hlen};
    emit(ctx, iov, 2 + count);
}

/* The TUN writes for the packets at `spans` of `raw`: runs of consecutive same-flow
 * segments (equal payloads, the last maybe shorter, seq contiguous) merged, anything
 * else as it came. `verify`: check each segment's TCP checksum before a merge hides it
 * (no outer checksum covered it, as with IPIP); one that fails goes alone, for the kernel
 * to drop as it drops any corrupt packet. */
static void coalesce(uint8_t *raw, const struct span *spans, size_t n, int verify,
                     emit_fn emit, void *ctx) {
    struct span run[MAX_RUN];
    int count = 0;
    size_t length = 0, mss = 0, hlen = 0;
    uint32_t next_seq = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t *p = raw + spans[i].start;
        size_t len = spans[i].end - spans[i].start;
        if (!mergeable(p, len, verify)) {
            if (count)
                emit_run(raw, run, count, length, emit, ctx);
            count = 0;
            run[0] = spans[i];
            emit_run(raw, run, 1, len, emit, ctx);
            continue;
        }
        size_t seg_hlen = 20 + (size_t)(p[32] >> 4) * 4, size = len - seg_hlen;
        uint32_t seq = get32(p + 24);
        if (count && !(same_flow(raw + run[0].start, p) && seq == next_seq && size <= mss
                       && length + size <= MAX_PACKET && count < MAX_RUN)) {
            emit_run(raw, run, count, length, emit, ctx);
            count = 0;
        }
        if (!count) {
            mss = size;
            hlen = seg_hlen;
            length = hlen;
        }
        run[count++] = spans[i];
        length += size;
        next_seq = seq + (uint32_t)size;
        if (size < mss || p[33] & PSH) {
            emit_run(raw, run, count, length, emit, ctx);
            count = 0;
        }
    }
    if (count)
        emit_run(raw, run, count, length, emit, ctx);
}

/* ---- the table ---------------------------------------------------------------------- */

/* u32 -> u64 with linear probing; deletion shifts the cluster back (no tombstones). */
struct slot { uint32_t key, used; uint64_t value; };
struct map { struct slot *slots; size_t cap, count; };

static inline size_t slot_of(const struct map *m, uint32_t k) {
    k ^= k >> 16; k *= 0x85EBCA6Bu; k ^= k >> 13; k *= 0xC2B2AE35u; k ^= k >> 16;
    return k & (m->cap - 1);
}

static struct slot *map_find(const struct map *m, uint32_t key) {
    if (!m->cap)
        return NULL;
    for (size_t i = slot_of(m, key);; i = (i + 1) & (m->cap - 1)) {
        if (!m->slots[i].used)
            return NULL;
        if (m->slots[i].key == key)
            return &m->slots[i];
    }
}

static int map_put(struct map *m, uint32_t key, uint64_t value);

static int map_grow(struct map *m) {
    struct map bigger = {calloc(m->cap ? m->cap * 2 : 16, sizeof(struct slot)),
                         m->cap ? m->cap * 2 : 16, 0};
    if (!bigger.slots)
        return -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].used)
            map_put(&bigger, m->slots[i].key, m->slots[i].value);
    free(m->slots);
    *m = bigger;
    return 0;
}

static int map_put(struct map *m, uint32_t key, uint64_t value) {
    struct slot *s = map_find(m, key);
    if (s) {
        s->value = value;
        return 0;
    }
    if ((m->count + 1) * 2 > m->cap && map_grow(m) < 0)
        return -1;
    size_t i = slot_of(m, key);
    while (m->slots[i].used)
        i = (i + 1) & (m->cap - 1);
    m->slots[i] = (struct slot){key, 1, value};
    m->count++;
    return 0;
}

static void map_del(struct map *m, uint32_t key) {
    struct slot *s = map_find(m, key);
    if (!s)
        return;
    size_t hole = (size_t)(s - m->slots);
    for (size_t i = (hole + 1) & (m->cap - 1); m->slots[i].used; i = (i + 1) & (m->cap - 1)) {
        size_t home = slot_of(m, m->slots[i].key);
        /* move it back unless its home lies cyclically in (hole, i] */
        if ((i > hole && (home <= hole || home > i)) || (i < hole && home <= hole && home > i)) {
            m->slots[hole] = m->slots[i];
            hole = i;
        }
    }
    m->slots[hole].used = 0;
    m->count--;
}

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    /* per prefix length: network -> node address << 16 | port. A lookup tries the
     * lengths in use from the longest (a borrowed /32 before its block's /26). */
    struct map peers[33];
    uint8_t lengths[33];  /* the prefix lengths that hold entries, longest first */
    int nlengths;
    struct map admitted;  /* node address -> 1: who may send to us */
    int wake;             /* eventfd: readable once stopping */
    int stopping;
} Table;

static inline uint32_t mask_of(unsigned length) {
    return length ? 0xFFFFFFFFu << (32 - length) : 0;
}

static void count_lengths(Table *t) {  /* under the lock */
    t->nlengths = 0;
    for (int length = 32; length >= 0; length--)
        if (t->peers[length].count)
            t->lengths[t->nlengths++] = (uint8_t)length;
}

static int Table_init(Table *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", names))
        return -1;
    self->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (self->wake < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pthread_mutex_init(&self->lock, NULL);
    return 0;
}

static void Table_dealloc(Table *self) {
    for (int i = 0; i <= 32; i++)
        free(self->peers[i].slots);
    free(self->admitted.slots);
    if (self->wake > 0)
        close(self->wake);
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *locked_put(Table *self, struct map *m, uint32_t key, uint64_t value) {
    pthread_mutex_lock(&self->lock);
    int failed = map_put(m, key, value);
    pthread_mutex_unlock(&self->lock);
    return failed ? PyErr_NoMemory() : Py_NewRef(Py_None);
}

static PyObject *locked_del(Table *self, struct map *m, uint32_t key) {
    pthread_mutex_lock(&self->lock);
    map_del(m, key);
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *Table_route(Table *self, PyObject *args) {
    unsigned int network, length, node, port;
    if (!PyArg_ParseTuple(args, "IIII", &network, &length, &node, &port))
        return NULL;
    if (length > 32)
        return PyErr_Format(PyExc_ValueError, "prefix length %u", length);
    pthread_mutex_lock(&self->lock);
    int failed = map_put(&self->peers[length], network & mask_of(length),
                         (uint64_t)node << 16 | (port & 0xFFFF));
    count_lengths(self);
    pthread_mutex_unlock(&self->lock);
    return failed ? PyErr_NoMemory() : Py_NewRef(Py_None);
}

static PyObject *Table_unroute(Table *self, PyObject *args) {
    unsigned int network, length;
    if (!PyArg_ParseTuple(args, "II", &network, &length))
        return NULL;
    if (length > 32)
        return PyErr_Format(PyExc_ValueError, "prefix length %u", length);
    pthread_mutex_lock(&self->lock);
    map_del(&self->peers[length], network & mask_of(length));
    count_lengths(self);
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *Table_admit(Table *self, PyObject *args) {
    unsigned int node;
    if (!PyArg_ParseTuple(args, "I", &node))
        return NULL;
    return locked_put(self, &self->admitted, node, 1);
}

static PyObject *Table_refuse(Table *self, PyObject *args) {
    unsigned int node;
    if (!PyArg_ParseTuple(args, "I", &node))
        return NULL;
    return locked_del(self, &self->admitted, node);
}

static PyObject *Table_stop(Table *self, PyObject *unused) {
    __atomic_store_n(&self->stopping, 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    if (write(self->wake, &one, sizeof one) < 0 && errno != EAGAIN)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static int lookup(Table *t, uint32_t dst, struct sockaddr_in *to) {
    pthread_mutex_lock(&t->lock);
    struct slot *s = NULL;
    for (int i = 0; i < t->nlengths && !s; i++)
        s = map_find(&t->peers[t->lengths[i]], dst & mask_of(t->lengths[i]));
    uint64_t v = s ? s->value : 0;
    pthread_mutex_unlock(&t->lock);
    if (!s)
        return 0;
    to->sin_family = AF_INET;
    to->sin_addr.s_addr = htonl((uint32_t)(v >> 16));
    to->sin_port = htons((uint16_t)v);
    return 1;
}

static int admitted(Table *t, const struct sockaddr_in *from) {
    pthread_mutex_lock(&t->lock);
    int yes = map_find(&t->admitted, ntohl(from->sin_addr.s_addr)) != NULL;
    pthread_mutex_unlock(&t->lock);
    return yes;
}

static inline int stopping(Table *t) { return __atomic_load_n(&t->stopping, __ATOMIC_ACQUIRE); }

/* Until `fd` is readable; 0 once the table is stopping. */
static int wait_readable(Table *t, int fd) {
    struct pollfd p[2] = {{fd, POLLIN, 0}, {t->wake, POLLIN, 0}};
    while (poll(p, 2, -1) < 0 && errno == EINTR)
        ;
    return !stopping(t);
}

/* ---- the loops ---------------------------------------------------------------------- */

static void send_udp(int sock, uint8_t *p, size_t len, size_t size, struct sockaddr_in *to) {
    size_t per = MAX_DATAGRAM / size;
    per = per > UDP_MAX_SEGMENTS ? UDP_MAX_SEGMENTS : per ? per : 1;
    for (size_t o = 0; o < len; o += size * per) {
        size_t chunk = len - o < size * per ? len - o : size * per;
        if (chunk <= size) {
            sendto(sock, p + o, chunk, 0, (struct sockaddr *)to, sizeof *to);
            continue;
        }
        union { char buf[CMSG_SPACE(sizeof(uint16_t))]; struct cmsghdr align; } control;
        struct iovec iov = {p + o, chunk};
        struct msghdr msg = {to, sizeof *to, &iov, 1, control.buf, sizeof control.buf, 0};
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_UDP_;
        c->cmsg_type = UDP_SEGMENT_;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t gso = (uint16_t)size;
        memcpy(CMSG_DATA(c), &gso, sizeof gso);
        sendmsg(sock, &msg, 0);
    }
}

static void send_raw(int sock, uint8_t *p, size_t len, size_t size, struct sockaddr_in *to) {
    if (len <= size) {  /* one packet (an ACK): the cheaper call */
        sendto(sock, p, len, 0, (struct sockaddr *)to, sizeof *to);
        return;
    }
    struct mmsghdr msgs[RAW_SEND_BATCH];
    struct iovec iov[RAW_SEND_BATCH];
    size_t o = 0;
    while (o < len) {
        unsigned n = 0;
        for (; n < RAW_SEND_BATCH && o < len; n++, o += size) {
            iov[n] = (struct iovec){p + o, len - o < size ? len - o : size};
            msgs[n] = (struct mmsghdr){{to, sizeof *to, &iov[n], 1, NULL, 0, 0}, 0};
        }
        for (unsigned sent = 0; sent < n;) {
            int r = sendmmsg(sock, msgs + sent, n - sent, 0);
            if (r <= 0)  /* the first failed packet is dropped, the rest go on */
                r = 1;
            sent += (unsigned)r;
        }
    }
}

static PyObject *run_outbound(PyObject *module, PyObject *args) {
    int tun, sock, raw;
    Table *table;
    if (!PyArg_ParseTuple(args, "iiO!p", &tun, &sock, &TableType, &table, &raw))
        return NULL;
    uint8_t *frame = malloc(VNET_LEN + MAX_PACKET), *out = malloc(SEGMENT_BUFFER);
    if (!frame || !out) {
        free(frame);
        free(out);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    prctl(PR_SET_NAME, "tunnel-out");  /* what top -H and /proc/PID/task/TID/comm show */
    while (!stopping(table)) {
        ssize_t n = read(tun, frame, VNET_LEN + MAX_PACKET);
        if (n < 0) {
            if (errno == EAGAIN && !wait_readable(table, tun))
                break;
            continue;
        }
        struct sockaddr_in to;
        if (n < VNET_LEN + 20 || frame[VNET_LEN] >> 4 != 4  /* e.g. IPv6 chatter */
            || !lookup(table, get32(frame + VNET_LEN + 16), &to))
            continue;
        uint8_t *packets;
        size_t len, size;
        if (outbound_frame(frame, (size_t)n, out, SEGMENT_BUFFER, &packets, &len, &size))
            continue;  /* headers that do not add up: dropped */
        (raw ? send_raw : send_udp)(sock, packets, len, size, &to);
    }
    Py_END_ALLOW_THREADS
    free(frame);
    free(out);
    Py_RETURN_NONE;
}

static void write_tun(void *ctx, struct iovec *iov, int n) {
    (void)!writev(*(int *)ctx, iov, n);  /* a refused packet is dropped; the next may pass */
}

/* One UDP GRO receive: datagrams of one sender, equal-sized but the last. */
static ssize_t receive_udp(Table *t, int sock, uint8_t *buf, struct span *spans) {
    struct sockaddr_in from;
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct iovec iov = {buf, RECEIVE_BUFFER};
    struct msghdr msg = {&from, sizeof from, &iov, 1, control.buf, sizeof control.buf, 0};
    ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT);
    if (n <= 0)
        return n;
    size_t size = (size_t)n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_UDP_ && c->cmsg_type == UDP_GRO_) {
            int gro;
            memcpy(&gro, CMSG_DATA(c), sizeof gro);
            if (gro > 0)
                size = (size_t)gro;
        }
    if (!admitted(t, &from))
        return 0;
    ssize_t count = 0;
    for (size_t o = 0; o < (size_t)n; o += size) {
        size_t end = o + size < (size_t)n ? o + size : (size_t)n;
        if (end - o >= 20 && buf[o] >> 4 == 4)
            spans[count++] = (struct span){o, end};
    }
    return count;
}

/* One recvmmsg of raw IPIP packets into `slot`-sized slots: past each outer header. */
static ssize_t receive_raw(Table *t, int sock, uint8_t *buf, size_t slot, struct span *spans) {
    struct mmsghdr msgs[RAW_BATCH];
    struct iovec iov[RAW_BATCH];
    struct sockaddr_in from[RAW_BATCH];
    for (int i = 0; i < RAW_BATCH; i++) {
        iov[i] = (struct iovec){buf + i * slot, slot};
        msgs[i] = (struct mmsghdr){{&from[i], sizeof from[i], &iov[i], 1, NULL, 0, 0}, 0};
    }
    int n = recvmmsg(sock, msgs, RAW_BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0)
        return n;
    ssize_t count = 0;
    for (int i = 0; i < n; i++) {
        size_t start = i * slot, end = start + msgs[i].msg_len;
        if (msgs[i].msg_len < 20 || !admitted(t, &from[i]))
            continue;
        start += (size_t)(buf[start] & 0x0F) * 4;
        if (end >= start + 20 && buf[start] >> 4 == 4)
            spans[count++] = (struct span){start, end};
    }
    return count;
}

static PyObject *run_inbound(PyObject *module, PyObject *args) {
    int sock, tun, raw;
    Py_ssize_t slot;
    Table *table;
    if (!PyArg_ParseTuple(args, "iiO!pn", &sock, &tun, &TableType, &table, &raw,
                          &slot))
        return NULL;
    slot = (slot + 1) & ~(Py_ssize_t)1;  /* even: every inner packet at an even offset */
    size_t size = raw ? (size_t)slot * RAW_BATCH : RECEIVE_BUFFER;
    uint8_t *buf = malloc(size);
    struct span *spans = malloc(sizeof(struct span) * (RECEIVE_BUFFER / 20 + RAW_BATCH));
    if (!buf || !spans || (raw && slot < 40)) {
        free(buf);
        free(spans);
        return raw && slot < 40 ? PyErr_Format(PyExc_ValueError, "slot %zd too small", slot)
                                : PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    prctl(PR_SET_NAME, "tunnel-in");
    while (!stopping(table)) {
        ssize_t n = raw ? receive_raw(table, sock, buf, (size_t)slot, spans)
                        : receive_udp(table, sock, buf, spans);
        if (n < 0) {
            if (errno == EAGAIN && !wait_readable(table, sock))
                break;
            continue;  /* EINTR, or an error queued on the socket (ICMP): go on */
        }
        coalesce(buf, spans, (size_t)n, raw, write_tun, &tun);
    }
    Py_END_ALLOW_THREADS
    free(buf);
    free(spans);
    Py_RETURN_NONE;
}

/* ---- the per-buffer work, for tests ------------------------------------------------- */

static PyObject *py_ones_sum(PyObject *module, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    uint32_t r = sum16(b.buf, (size_t)b.len) % 0xFFFF;
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(r);
}

static PyObject *py_outbound(PyObject *module, PyObject *args) {
    Py_buffer frame, out;
    if (!PyArg_ParseTuple(args, "w*w*", &frame, &out))
        return NULL;
    uint8_t *packets;
    size_t len = 0, size = 0;
    enum frame_error e = outbound_frame(frame.buf, (size_t)frame.len, out.buf, (size_t)out.len,
                                        &packets, &len, &size);
    PyObject *result = NULL;
    if (e == FRAME_OFFLOAD)
        PyErr_Format(FrameError, frame_errors[e], ((uint8_t *)frame.buf)[1]);
    else if (e)
        PyErr_SetString(FrameError, frame_errors[e]);
    else  /* where the packets are: 0 in the frame (past its vnet header), 1 in out */
        result = Py_BuildValue("inn", packets == out.buf, (Py_ssize_t)len, (Py_ssize_t)size);
    PyBuffer_Release(&frame);
    PyBuffer_Release(&out);
    return result;
}

static void append_write(void *ctx, struct iovec *iov, int n) {
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!b)
        return;
    char *p = PyBytes_AS_STRING(b);
    for (int i = 0; i < n; i++) {
        memcpy(p, iov[i].iov_base, iov[i].iov_len);
        p += iov[i].iov_len;
    }
    PyList_Append(ctx, b);
    Py_DECREF(b);
}

static PyObject *py_coalesce(PyObject *module, PyObject *args) {
    Py_buffer raw;
    PyObject *list;
    int verify;
    if (!PyArg_ParseTuple(args, "w*O!p", &raw, &PyList_Type, &list, &verify))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(list);
    struct span *spans = PyMem_Malloc(sizeof(struct span) * (size_t)(n ? n : 1));
    PyObject *writes = spans ? PyList_New(0) : PyErr_NoMemory();
    for (Py_ssize_t i = 0; writes && i < n; i++) {
        Py_ssize_t start, end;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(list, i), "nn", &start, &end))
            Py_CLEAR(writes);
        else if (start < 0 || end > raw.len || end < start) {
            PyErr_SetString(PyExc_ValueError, "span outside the buffer");
            Py_CLEAR(writes);
        } else
            spans[i] = (struct span){(size_t)start, (size_t)end};
    }
    if (writes)
        coalesce(raw.buf, spans, (size_t)n, verify, append_write, writes);
    if (writes && PyErr_Occurred())
        Py_CLEAR(writes);
    PyMem_Free(spans);
    PyBuffer_Release(&raw);
    return writes;
}

/* ---- the module --------------------------------------------------------------------- */

static PyMethodDef Table_methods[] = {
    {"route", (PyCFunction)Table_route, METH_VARARGS,
     "route(network, length, node, port): send packets for network/length (addresses as "
     "ints) to the node's address and port; the longest prefix that holds one wins"},
    {"unroute", (PyCFunction)Table_unroute, METH_VARARGS,
     "unroute(network, length): no longer send it"},
    {"admit", (PyCFunction)Table_admit, METH_VARARGS, "admit(node): take packets from it"},
    {"refuse", (PyCFunction)Table_refuse, METH_VARARGS, "refuse(node): no longer take them"},
    {"stop", (PyCFunction)Table_stop, METH_NOARGS, "stop(): end every loop running on it"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gingham.dataplane.tunnel_loops.Table",
    .tp_doc = "Table(): where each network's packets go (longest prefix -> node), and the "
              "nodes allowed to send; shared by the loops, changed under a mutex",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Table_init,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Table_methods,
};

static PyMethodDef methods[] = {
    {"run_outbound", run_outbound, METH_VARARGS,
     "run_outbound(tun_fd, sock_fd, table, raw): TUN -> nodes until table.stop(); raw: IPIP "
     "through a raw protocol-4 socket, else udp datagrams"},
    {"run_inbound", run_inbound, METH_VARARGS,
     "run_inbound(sock_fd, tun_fd, table, raw, slot): nodes -> TUN until table.stop(); slot: "
     "the largest raw IPIP packet a peer sends"},
    {"ones_sum", py_ones_sum, METH_O, "ones_sum(data): the ones'-complement sum modulo 0xFFFF"},
    {"outbound", py_outbound, METH_VARARGS,
     "outbound(frame, out) -> (in_out, length, size): the wire packets one TUN frame stands "
     "for, back to back in frame[10:] (in_out 0) or out (1), each `size` long but the last"},
    {"coalesce", py_coalesce, METH_VARARGS,
     "coalesce(raw, spans, verify) -> [bytes]: the TUN writes for the packets at spans"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "tunnel_loops",
    "The userspace tunnels' packet loops and their per-buffer work, in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_tunnel_loops(void) {
    if (PyType_Ready(&TableType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m)
        return NULL;
    FrameError = PyErr_NewExceptionWithDoc(
        "gingham.dataplane.tunnel_loops.FrameError",
        "A frame the kernel would never hand over: cut short, or an offload not asked for.",
        PyExc_ValueError, NULL);
    if (!FrameError || PyModule_AddObjectRef(m, "FrameError", FrameError) < 0
        || PyModule_AddObjectRef(m, "Table", (PyObject *)&TableType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
