/* xs-ring-bridge: plays the GUEST side of domain N's xenstore ring (ring-N in the state folder)
 * and offers it on a unix socket, so that libxenstore programs pointed at that socket talk to
 * xenstored AS domain N. Like Linux's /dev/xen/xenbus it multiplexes several clients on the one
 * ring: whole messages only, req_ids and watch tokens rewritten per client, and a closing
 * client's watches and transactions are removed on its behalf.
 * Usage: xs-ring-bridge <state-dir> <domid> <socket-path>   (prints "ready" when listening) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <xen/io/xs_wire.h>

#define HDR ((size_t)sizeof(struct xsd_sockmsg))
#define MSG_MAX (HDR + XENSTORE_PAYLOAD_MAX)
#define MAX_CLIENTS 64
#define TO_RING_SIZE 65536
#define CLIENT_OUT_MAX (16u << 20) /* a client that stops reading is cut off here */
#define PENDING_SLOTS 65536

struct buf {
    char *data;
    size_t len, cap;
};

struct client {
    int fd;                 /* -1: free slot */
    unsigned serial;        /* unique per connection: watch tokens carry it */
    char in[MSG_MAX];       /* the message being received */
    size_t in_len;
    struct buf out;         /* bytes to send to the client */
    size_t out_off;
    struct buf *watches;    /* rewritten WATCH payloads still registered */
    size_t nwatches;
    uint32_t *txs;          /* transactions it started and did not end */
    size_t ntxs;
};

struct pending {
    uint32_t gid;      /* bridge's req_id; 0 = free */
    int client;        /* -1: internal (cleanup), reply dropped */
    unsigned serial;
    uint32_t req_id;   /* the client's own req_id */
    uint32_t type;
};

static unsigned domid;
static const char *sock_path;
static char notify_path[4096], fifo_path[4096];
static volatile struct xenstore_domain_interface *intf;
static struct client clients[MAX_CLIENTS];
static struct pending pending[PENDING_SLOTS];
static uint32_t next_gid = 1;
static unsigned next_serial = 1;
static char to_ring[TO_RING_SIZE];
static size_t tr_head, tr_len;
static char rsp_msg[MSG_MAX + 64]; /* reply being assembled from the response ring */
static size_t rsp_len;
static int listen_fd = -1, notify_fd = -1, evtchn_fd = -1;
static volatile sig_atomic_t stop_requested;

static void die(const char *what)
{
    fprintf(stderr, "xs-ring-bridge[%u]: %s: %s\n", domid, what, strerror(errno));
    exit(1);
}

static void buf_append(struct buf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        b->data = realloc(b->data, cap);
        if (!b->data)
            die("realloc");
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void notify_xenstored(void)
{
    uint32_t port = 1000u + domid;
    if (evtchn_fd < 0)
        evtchn_fd = open(fifo_path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (evtchn_fd < 0)
        return; /* xenstored not running: it scans every ring when it starts */
    if (write(evtchn_fd, &port, sizeof(port)) < 0 && errno == EPIPE) {
        close(evtchn_fd);
        evtchn_fd = -1;
    }
}

/* ---- requests: client -> to_ring -> request ring ---- */

static size_t to_ring_room(void)
{
    return TO_RING_SIZE - tr_len;
}

static void to_ring_put(const void *p, size_t n)
{
    const char *c = p;
    size_t i;
    for (i = 0; i < n; i++)
        to_ring[(tr_head + tr_len + i) % TO_RING_SIZE] = c[i];
    tr_len += n;
}

static uint32_t new_pending(int client, unsigned serial, uint32_t req_id, uint32_t type)
{
    uint32_t gid;
    do {
        gid = next_gid++;
    } while (gid == 0 || pending[gid % PENDING_SLOTS].gid != 0);
    pending[gid % PENDING_SLOTS] = (struct pending){ gid, client, serial, req_id, type };
    return gid;
}

/* Queues one complete message (header + payload) for the ring; caller checked the room. */
static void queue_msg(uint32_t type, uint32_t gid, uint32_t tx_id, const void *payload, uint32_t len)
{
    struct xsd_sockmsg m = { type, gid, tx_id, len };
    to_ring_put(&m, HDR);
    to_ring_put(payload, len);
}

static void remove_watch(struct client *c, const char *payload, size_t len)
{
    size_t i;
    for (i = 0; i < c->nwatches; i++)
        if (c->watches[i].len == len && !memcmp(c->watches[i].data, payload, len)) {
            free(c->watches[i].data);
            c->watches[i] = c->watches[--c->nwatches];
            return;
        }
}

static void remove_tx(struct client *c, uint32_t tx)
{
    size_t i;
    for (i = 0; i < c->ntxs; i++)
        if (c->txs[i] == tx) {
            c->txs[i] = c->txs[--c->ntxs];
            return;
        }
}

/* Rewrites "path\0token\0" into "path\0<serial>/token\0" (out must hold MSG_MAX). */
static int rewrite_watch(const struct client *c, const char *p, uint32_t len, char *out, uint32_t *olen)
{
    const char *path_end = memchr(p, 0, len);
    int n;
    if (!path_end)
        return -1;
    n = snprintf(out, MSG_MAX, "%.*s%c%u/", (int)(path_end - p), p, 0, c->serial);
    if (n < 0 || (size_t)n + (len - (size_t)(path_end + 1 - p)) > XENSTORE_PAYLOAD_MAX)
        return -1;
    memcpy(out + n, path_end + 1, len - (size_t)(path_end + 1 - p));
    *olen = (uint32_t)n + (len - (uint32_t)(path_end + 1 - p));
    return 0;
}

/* A complete request from client ci: track it, rewrite it, queue it. */
static void forward_request(int ci)
{
    struct client *c = &clients[ci];
    struct xsd_sockmsg m;
    static char rewritten[MSG_MAX];
    const char *payload = c->in + HDR;
    uint32_t len, gid;

    memcpy(&m, c->in, HDR);
    len = m.len;
    if (m.type == XS_WATCH || m.type == XS_UNWATCH) {
        if (rewrite_watch(c, payload, len, rewritten, &len) == 0) {
            payload = rewritten;
            if (m.type == XS_WATCH) {
                struct buf w = { 0, 0, 0 };
                buf_append(&w, payload, len);
                c->watches = realloc(c->watches, (c->nwatches + 1) * sizeof(*c->watches));
                if (!c->watches)
                    die("realloc");
                c->watches[c->nwatches++] = w;
            } else {
                remove_watch(c, payload, len);
            }
        }
    }
    if (m.type == XS_TRANSACTION_END)
        remove_tx(c, m.tx_id);
    gid = new_pending(ci, c->serial, m.req_id, m.type);
    queue_msg(m.type, gid, m.tx_id, payload, len);
}

static void close_client(int ci)
{
    struct client *c = &clients[ci];
    size_t i;
    char end_abort[] = "F";

    close(c->fd);
    c->fd = -1;
    /* What a socket connection's close would do in xenstored: drop its watches and abort its
     * transactions. Replies to these go nowhere. (to_ring can always take them: it is drained
     * into the ring before new client input is read, see main loop.) */
    for (i = 0; i < c->nwatches; i++) {
        if (to_ring_room() >= HDR + c->watches[i].len)
            queue_msg(XS_UNWATCH, new_pending(-1, 0, 0, XS_UNWATCH), 0, c->watches[i].data,
                      (uint32_t)c->watches[i].len);
        free(c->watches[i].data);
    }
    for (i = 0; i < c->ntxs; i++)
        if (to_ring_room() >= HDR + sizeof(end_abort))
            queue_msg(XS_TRANSACTION_END, new_pending(-1, 0, 0, XS_TRANSACTION_END), c->txs[i],
                      end_abort, sizeof(end_abort));
    free(c->watches);
    free(c->txs);
    free(c->out.data);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

/* Reads what the client sent; forwards every complete message while to_ring has room. */
static void read_client(int ci)
{
    struct client *c = &clients[ci];
    for (;;) {
        size_t want;
        ssize_t r;
        if (c->in_len < HDR) {
            want = HDR - c->in_len;
        } else {
            struct xsd_sockmsg m;
            memcpy(&m, c->in, HDR);
            if (m.len > XENSTORE_PAYLOAD_MAX) {
                /* xenstored drops a socket connection for this; we drop the client, not the ring. */
                fprintf(stderr, "xs-ring-bridge[%u]: client sent %u-byte payload, closing it\n", domid,
                        m.len);
                close_client(ci);
                return;
            }
            want = HDR + m.len - c->in_len;
        }
        if (want == 0) {
            if (to_ring_room() < c->in_len)
                return; /* wait for the ring to drain */
            forward_request(ci);
            c->in_len = 0;
            continue;
        }
        r = recv(c->fd, c->in + c->in_len, want, MSG_DONTWAIT);
        if (r > 0) {
            c->in_len += (size_t)r;
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        close_client(ci); /* EOF or error; a half-sent message never reached the ring */
        return;
    }
}

static size_t push_requests(void)
{
    XENSTORE_RING_IDX cons = intf->req_cons, prod = intf->req_prod;
    size_t moved = 0;
    __sync_synchronize();
    if (prod - cons > XENSTORE_RING_SIZE)
        return 0;
    while (tr_len && prod - cons < XENSTORE_RING_SIZE) {
        size_t k = XENSTORE_RING_SIZE - (prod - cons);
        size_t chunk = XENSTORE_RING_SIZE - MASK_XENSTORE_IDX(prod);
        size_t src = TO_RING_SIZE - tr_head;
        if (k > tr_len)
            k = tr_len;
        if (k > chunk)
            k = chunk;
        if (k > src)
            k = src;
        memcpy((char *)intf->req + MASK_XENSTORE_IDX(prod), to_ring + tr_head, k);
        tr_head = (tr_head + k) % TO_RING_SIZE;
        tr_len -= k;
        prod += (XENSTORE_RING_IDX)k;
        moved += k;
    }
    if (moved) {
        __sync_synchronize();
        intf->req_prod = prod;
        notify_xenstored();
    }
    return moved;
}

/* ---- replies: response ring -> rsp_msg -> the client that asked ---- */

static void deliver(int ci, const void *p, size_t n)
{
    struct client *c = &clients[ci];
    if (c->fd < 0)
        return;
    if (c->out.len - c->out_off + n > CLIENT_OUT_MAX) {
        fprintf(stderr, "xs-ring-bridge[%u]: client not reading, closing it\n", domid);
        close_client(ci);
        return;
    }
    buf_append(&c->out, p, n);
}

static void dispatch_reply(void)
{
    struct xsd_sockmsg m;
    char *payload = rsp_msg + HDR;

    memcpy(&m, rsp_msg, HDR);
    if (m.type == XS_WATCH_EVENT) {
        /* "path\0<serial>/token\0": route by serial, strip the prefix. */
        char *path_end = memchr(payload, 0, m.len), *tok, *slash;
        unsigned long serial;
        int ci;
        if (!path_end || path_end + 1 >= payload + m.len)
            return;
        tok = path_end + 1;
        serial = strtoul(tok, &slash, 10);
        if (*slash != '/')
            return;
        for (ci = 0; ci < MAX_CLIENTS; ci++)
            if (clients[ci].fd >= 0 && clients[ci].serial == serial) {
                size_t strip = (size_t)(slash + 1 - tok);
                struct xsd_sockmsg out = m;
                out.len = m.len - (uint32_t)strip;
                deliver(ci, &out, HDR);
                deliver(ci, payload, (size_t)(tok - payload));
                deliver(ci, slash + 1, m.len - (size_t)(slash + 1 - payload));
                return;
            }
        return;
    }
    {
        struct pending *p = &pending[m.req_id % PENDING_SLOTS];
        struct client *c;
        if (p->gid != m.req_id || m.req_id == 0)
            return; /* not ours (should not happen) */
        if (p->client >= 0) {
            c = &clients[p->client];
            if (c->fd >= 0 && c->serial == p->serial) {
                if (p->type == XS_TRANSACTION_START && m.type == XS_TRANSACTION_START) {
                    uint32_t tx = (uint32_t)strtoul(payload, NULL, 10);
                    c->txs = realloc(c->txs, (c->ntxs + 1) * sizeof(*c->txs));
                    if (!c->txs)
                        die("realloc");
                    c->txs[c->ntxs++] = tx;
                }
                m.req_id = p->req_id;
                deliver(p->client, &m, HDR);
                deliver(p->client, payload, m.len);
            } else if (p->type == XS_TRANSACTION_START && m.type == XS_TRANSACTION_START) {
                /* The client left before its transaction started: abort it. */
                char end_abort[] = "F";
                uint32_t tx = (uint32_t)strtoul(payload, NULL, 10);
                if (to_ring_room() >= HDR + sizeof(end_abort))
                    queue_msg(XS_TRANSACTION_END, new_pending(-1, 0, 0, XS_TRANSACTION_END), tx,
                              end_abort, sizeof(end_abort));
            } else if (p->type == XS_WATCH && m.type == XS_WATCH) {
                /* Likewise a watch acknowledged after its client left: nobody will unwatch it.
                 * It stays until the domain goes; its events are dropped (unknown serial). */
            }
        }
        p->gid = 0;
    }
}

static size_t pull_responses(void)
{
    XENSTORE_RING_IDX cons = intf->rsp_cons, prod = intf->rsp_prod;
    size_t moved = 0;
    __sync_synchronize();
    if (prod - cons > XENSTORE_RING_SIZE)
        return 0;
    while (prod != cons) {
        size_t need, k, chunk;
        if (rsp_len < HDR) {
            need = HDR - rsp_len;
        } else {
            struct xsd_sockmsg m;
            memcpy(&m, rsp_msg, HDR);
            if (m.len > XENSTORE_PAYLOAD_MAX)
                die("xenstored sent an oversized reply");
            need = HDR + m.len - rsp_len;
        }
        k = prod - cons;
        chunk = XENSTORE_RING_SIZE - MASK_XENSTORE_IDX(cons);
        if (k > chunk)
            k = chunk;
        if (k > need)
            k = need;
        memcpy(rsp_msg + rsp_len, (const char *)intf->rsp + MASK_XENSTORE_IDX(cons), k);
        rsp_len += k;
        cons += (XENSTORE_RING_IDX)k;
        moved += k;
        if (rsp_len >= HDR) {
            struct xsd_sockmsg m;
            memcpy(&m, rsp_msg, HDR);
            if (rsp_len == HDR + m.len) {
                dispatch_reply();
                rsp_len = 0;
            }
        }
    }
    if (moved) {
        __sync_synchronize();
        intf->rsp_cons = cons;
        notify_xenstored();
    }
    return moved;
}

static void flush_client(int ci)
{
    struct client *c = &clients[ci];
    while (c->fd >= 0 && c->out_off < c->out.len) {
        ssize_t w = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                close_client(ci);
            return;
        }
        c->out_off += (size_t)w;
    }
    if (c->fd >= 0 && c->out_off == c->out.len)
        c->out_off = c->out.len = 0;
}

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void cleanup(void)
{
    unlink(notify_path);
    unlink(sock_path);
}

int main(int argc, char **argv)
{
    struct sockaddr_un sa;
    char ring_path[4096];
    const char *parent = getenv("XEN_MOCKS_PARENT_PID");
    int fd, i;
    void *p;

    if (argc != 4) {
        fprintf(stderr, "usage: %s <state-dir> <domid> <socket-path>\n", argv[0]);
        return 2;
    }
    /* Same rule as the xenstored shim: die with the harness that started us. */
    if (parent && *parent) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != (pid_t)atoi(parent))
            return 1;
    }
    domid = (unsigned)strtoul(argv[2], NULL, 10);
    sock_path = argv[3];
    snprintf(ring_path, sizeof(ring_path), "%s/ring-%u", argv[1], domid);
    snprintf(notify_path, sizeof(notify_path), "%s/evt-%u.sock", argv[1], domid);
    snprintf(fifo_path, sizeof(fifo_path), "%s/evtchn", argv[1]);
    for (i = 0; i < MAX_CLIENTS; i++)
        clients[i].fd = -1;

    fd = open(ring_path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        die(ring_path);
    p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        die("mmap");
    close(fd);
    intf = p;

    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGHUP, on_signal);

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(notify_path) >= sizeof(sa.sun_path) || strlen(sock_path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "xs-ring-bridge[%u]: socket path too long\n", domid);
        return 1;
    }
    /* xenstored's notifications for our port arrive as datagrams on evt-N.sock. */
    notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    strcpy(sa.sun_path, notify_path);
    unlink(notify_path);
    if (notify_fd < 0 || bind(notify_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        die(notify_path);
    listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    strcpy(sa.sun_path, sock_path);
    unlink(sock_path);
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        listen(listen_fd, 64) != 0)
        die(sock_path);
    atexit(cleanup);
    printf("ready\n");
    fflush(stdout);

    while (!stop_requested) {
        struct pollfd fds[2 + MAX_CLIENTS];
        int idx[MAX_CLIENTS];
        int nfds = 0, ci;
        char junk[256];

        /* Drain notifications first, then work the rings: a notification arriving after the
         * look wakes the next poll, so none is lost. */
        while (recv(notify_fd, junk, sizeof(junk), MSG_DONTWAIT) > 0)
            ;
        while (push_requests() + pull_responses())
            ;
        for (ci = 0; ci < MAX_CLIENTS; ci++)
            if (clients[ci].fd >= 0) {
                read_client(ci); /* forwards messages that waited for to_ring room */
                flush_client(ci);
            }
        if (tr_len && push_requests())
            continue;

        fds[nfds].fd = notify_fd;
        fds[nfds++].events = POLLIN;
        fds[nfds].fd = listen_fd;
        fds[nfds++].events = POLLIN;
        for (ci = 0; ci < MAX_CLIENTS; ci++) {
            struct client *c = &clients[ci];
            idx[ci] = -1;
            if (c->fd < 0)
                continue;
            idx[ci] = nfds;
            fds[nfds].fd = c->fd;
            /* No reading while to_ring is too full for a maximum message: back-pressure. */
            fds[nfds].events = (short)((to_ring_room() >= MSG_MAX ? POLLIN : 0) |
                                       (c->out_off < c->out.len ? POLLOUT : 0));
            nfds++;
        }
        if (poll(fds, (nfds_t)nfds, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (fds[1].revents & POLLIN) {
            int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (c >= 0) {
                for (ci = 0; ci < MAX_CLIENTS && clients[ci].fd >= 0; ci++)
                    ;
                if (ci == MAX_CLIENTS) {
                    close(c);
                } else {
                    clients[ci].fd = c;
                    clients[ci].serial = next_serial++;
                }
            }
        }
        for (ci = 0; ci < MAX_CLIENTS; ci++) {
            if (idx[ci] < 0 || clients[ci].fd < 0)
                continue;
            if (fds[idx[ci]].revents & (POLLIN | POLLHUP | POLLERR))
                read_client(ci);
            if (clients[ci].fd >= 0 && (fds[idx[ci]].revents & POLLOUT))
                flush_client(ci);
        }
    }
    return 0;
}
