/* xs-ring-bridge: plays the GUEST side of domain N's xenstore ring (ring-N in the state folder)
 * and relays it to one client at a time on a unix socket, so that any libxenstore program
 * pointed at that socket talks to xenstored AS domain N.
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
#include <time.h>
#include <unistd.h>

#include <xen/io/xs_wire.h>

#define BUF_SIZE 65536
#define HDR_SIZE ((unsigned)sizeof(struct xsd_sockmsg))
#define RESET_REQ_ID 0x7ffffff0u
#define DRAIN_TIMEOUT_MS 5000

struct fifo {
    char data[BUF_SIZE];
    size_t head, len; /* bytes [head, head+len) modulo BUF_SIZE */
};

/* Tracks message boundaries in one direction of the byte stream. */
struct framer {
    unsigned char hdr[sizeof(struct xsd_sockmsg)];
    unsigned have;   /* header bytes seen of the current message */
    uint32_t left;   /* payload bytes still to come */
};

static const char *state_dir, *sock_path;
static unsigned domid;
static char notify_path[4096], fifo_path[4096];
static volatile struct xenstore_domain_interface *intf;
static struct fifo to_ring, to_client;
static struct framer req_framer, rsp_framer;
static long outstanding;  /* requests in the ring without a reply yet */
static int listen_fd = -1, client_fd = -1, notify_fd = -1, evtchn_fd = -1;
static volatile sig_atomic_t stop_requested;

enum mode { IDLE, CONNECTED, DRAINING, RESETTING };
static enum mode mode = IDLE;
static struct timespec drain_started;

static void die(const char *what)
{
    fprintf(stderr, "xs-ring-bridge[%u]: %s: %s\n", domid, what, strerror(errno));
    exit(1);
}

static long ms_since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - t->tv_sec) * 1000 + (now.tv_nsec - t->tv_nsec) / 1000000;
}

/* Feeds bytes through a framer; returns how many messages completed, and reports each
 * completed message's type through *types (may be NULL). */
static void frame(struct framer *f, const char *p, size_t n, int is_reply)
{
    while (n) {
        if (f->have < HDR_SIZE) {
            size_t k = HDR_SIZE - f->have;
            if (k > n)
                k = n;
            memcpy(f->hdr + f->have, p, k);
            f->have += (unsigned)k;
            p += k;
            n -= k;
            if (f->have == HDR_SIZE) {
                struct xsd_sockmsg m;
                memcpy(&m, f->hdr, sizeof(m));
                f->left = m.len;
                if (is_reply) {
                    if (m.type != XS_WATCH_EVENT)
                        outstanding--;
                } else {
                    outstanding++;
                }
            }
        } else {
            size_t k = f->left < n ? f->left : n;
            f->left -= (uint32_t)k;
            p += k;
            n -= k;
        }
        if (f->have == HDR_SIZE && f->left == 0)
            f->have = 0;
    }
}

static void notify_xenstored(void)
{
    uint32_t port = 1000u + domid;
    if (evtchn_fd < 0)
        evtchn_fd = open(fifo_path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (evtchn_fd < 0)
        return; /* xenstored not running: it scans the ring when it comes back */
    if (write(evtchn_fd, &port, sizeof(port)) < 0 && errno == EPIPE) {
        close(evtchn_fd);
        evtchn_fd = -1;
    }
}

/* Moves bytes from to_ring into the request ring; returns bytes moved. */
static size_t push_requests(void)
{
    XENSTORE_RING_IDX cons = intf->req_cons, prod = intf->req_prod;
    size_t moved = 0;
    __sync_synchronize();
    if (prod - cons > XENSTORE_RING_SIZE)
        return 0;
    while (to_ring.len && prod - cons < XENSTORE_RING_SIZE) {
        size_t space = XENSTORE_RING_SIZE - (prod - cons);
        size_t chunk = XENSTORE_RING_SIZE - MASK_XENSTORE_IDX(prod);
        size_t src = BUF_SIZE - to_ring.head;
        size_t k = to_ring.len;
        if (k > space)
            k = space;
        if (k > chunk)
            k = chunk;
        if (k > src)
            k = src;
        memcpy((char *)intf->req + MASK_XENSTORE_IDX(prod), to_ring.data + to_ring.head, k);
        frame(&req_framer, to_ring.data + to_ring.head, k, 0);
        to_ring.head = (to_ring.head + k) % BUF_SIZE;
        to_ring.len -= k;
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

/* Moves bytes from the response ring into to_client; returns bytes moved. */
static size_t pull_responses(void)
{
    XENSTORE_RING_IDX cons = intf->rsp_cons, prod = intf->rsp_prod;
    size_t moved = 0;
    __sync_synchronize();
    if (prod - cons > XENSTORE_RING_SIZE)
        return 0;
    while (prod != cons && to_client.len < BUF_SIZE) {
        size_t avail = prod - cons;
        size_t chunk = XENSTORE_RING_SIZE - MASK_XENSTORE_IDX(cons);
        size_t tail = (to_client.head + to_client.len) % BUF_SIZE;
        size_t room = BUF_SIZE - to_client.len;
        size_t k = avail;
        if (k > chunk)
            k = chunk;
        if (k > room)
            k = room;
        if (k > BUF_SIZE - tail)
            k = BUF_SIZE - tail;
        memcpy(to_client.data + tail, (const char *)intf->rsp + MASK_XENSTORE_IDX(cons), k);
        frame(&rsp_framer, to_client.data + tail, k, 1);
        to_client.len += k;
        cons += (XENSTORE_RING_IDX)k;
        moved += k;
    }
    if (moved) {
        __sync_synchronize();
        intf->rsp_cons = cons;
        notify_xenstored();
    }
    return moved;
}

static void flush_client(void)
{
    while (to_client.len) {
        size_t k = to_client.len;
        ssize_t w;
        if (k > BUF_SIZE - to_client.head)
            k = BUF_SIZE - to_client.head;
        if (mode != CONNECTED) {
            w = (ssize_t)k; /* nobody to deliver to: replies of a gone client are dropped */
        } else {
            w = send(client_fd, to_client.data + to_client.head, k, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return;
                w = (ssize_t)k; /* client gone; the read side notices and starts draining */
            }
        }
        to_client.head = (to_client.head + (size_t)w) % BUF_SIZE;
        to_client.len -= (size_t)w;
    }
}

static void fifo_put(struct fifo *f, const void *p, size_t n)
{
    const char *c = p;
    while (n-- && f->len < BUF_SIZE) {
        f->data[(f->head + f->len) % BUF_SIZE] = *c++;
        f->len++;
    }
}

/* The client left: complete the request it may have left half-written in the ring (zero
 * padding, xenstored answers it with an error), drop what never reached the ring, and wait for
 * every outstanding reply before resetting the guest connection's watches and transactions. */
static void start_draining(void)
{
    struct fifo keep;
    struct framer sim = req_framer;

    close(client_fd);
    client_fd = -1;
    mode = DRAINING;
    clock_gettime(CLOCK_MONOTONIC, &drain_started);

    memset(&keep, 0, sizeof(keep));
    while (sim.have != 0 || sim.left != 0) {
        char c = 0;
        if (to_ring.len) {
            c = to_ring.data[to_ring.head];
            to_ring.head = (to_ring.head + 1) % BUF_SIZE;
            to_ring.len--;
        }
        fifo_put(&keep, &c, 1);
        {
            long saved = outstanding;
            frame(&sim, &c, 1, 0);
            outstanding = saved;
        }
        if (sim.have == HDR_SIZE && sim.left > XENSTORE_PAYLOAD_MAX)
            break; /* a corrupt header: xenstored will drop the connection anyway */
    }
    to_ring = keep;
}

static void send_reset(void)
{
    struct xsd_sockmsg m = { XS_RESET_WATCHES, RESET_REQ_ID, 0, 0 };
    fifo_put(&to_ring, &m, sizeof(m));
    mode = RESETTING;
    clock_gettime(CLOCK_MONOTONIC, &drain_started);
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
    int fd;
    void *p;

    if (argc != 4) {
        fprintf(stderr, "usage: %s <state-dir> <domid> <socket-path>\n", argv[0]);
        return 2;
    }
    /* Same rule as the xenstored shim: die with the harness that started us. */
    if (getenv("XEN_MOCKS_PARENT_PID") && *getenv("XEN_MOCKS_PARENT_PID")) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != (pid_t)atoi(getenv("XEN_MOCKS_PARENT_PID")))
            return 1;
    }
    state_dir = argv[1];
    domid = (unsigned)strtoul(argv[2], NULL, 10);
    sock_path = argv[3];
    snprintf(ring_path, sizeof(ring_path), "%s/ring-%u", state_dir, domid);
    snprintf(notify_path, sizeof(notify_path), "%s/evt-%u.sock", state_dir, domid);
    snprintf(fifo_path, sizeof(fifo_path), "%s/evtchn", state_dir);

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

    /* xenstored's notifications for our port arrive as datagrams on evt-N.sock. */
    notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(notify_path) >= sizeof(sa.sun_path) || strlen(sock_path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "xs-ring-bridge[%u]: socket path too long\n", domid);
        return 1;
    }
    strcpy(sa.sun_path, notify_path);
    unlink(notify_path);
    if (notify_fd < 0 || bind(notify_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        die(notify_path);

    listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    strcpy(sa.sun_path, sock_path);
    unlink(sock_path);
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        listen(listen_fd, 16) != 0)
        die(sock_path);
    atexit(cleanup);
    printf("ready\n");
    fflush(stdout);

    while (!stop_requested) {
        struct pollfd fds[3];
        int nfds = 0, timeout = -1, i_listen = -1, i_client = -1;
        char buf[4096];

        /* Drain notifications first, then look at the rings: a notification that arrives
         * after the look wakes the next poll, so none is lost. */
        while (recv(notify_fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
            ;
        while (push_requests() + pull_responses())
            flush_client();
        flush_client();

        if (mode == DRAINING && (outstanding <= 0 || ms_since(&drain_started) > DRAIN_TIMEOUT_MS)) {
            if (outstanding > 0)
                fprintf(stderr, "xs-ring-bridge[%u]: %ld replies never came, resetting\n", domid,
                        outstanding);
            outstanding = 0;
            send_reset();
            continue;
        }
        if (mode == RESETTING && (outstanding <= 0 || ms_since(&drain_started) > DRAIN_TIMEOUT_MS)) {
            outstanding = 0;
            mode = IDLE;
        }

        fds[nfds].fd = notify_fd;
        fds[nfds].events = POLLIN;
        nfds++;
        if (mode == IDLE) {
            i_listen = nfds;
            fds[nfds].fd = listen_fd;
            fds[nfds].events = POLLIN;
            nfds++;
        }
        if (mode == CONNECTED) {
            i_client = nfds;
            fds[nfds].fd = client_fd;
            fds[nfds].events = (short)((to_ring.len < BUF_SIZE ? POLLIN : 0) |
                                       (to_client.len ? POLLOUT : 0));
            nfds++;
        }
        if (mode == DRAINING || mode == RESETTING)
            timeout = 100; /* only to enforce the drain timeout */

        if (poll(fds, (nfds_t)nfds, timeout) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (i_listen >= 0 && (fds[i_listen].revents & POLLIN)) {
            int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (c >= 0) {
                client_fd = c;
                mode = CONNECTED;
            }
        }
        if (i_client >= 0 && fds[i_client].revents) {
            if (fds[i_client].revents & (POLLIN | POLLHUP | POLLERR)) {
                size_t room = BUF_SIZE - to_ring.len;
                ssize_t r;
                if (room > sizeof(buf))
                    room = sizeof(buf);
                r = room ? recv(client_fd, buf, room, MSG_DONTWAIT) : 0;
                if (r > 0)
                    fifo_put(&to_ring, buf, (size_t)r);
                else if (room && (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)))
                    start_draining();
            }
        }
    }
    return 0;
}
