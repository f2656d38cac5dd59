/* LD_PRELOAD library that lets Debian's real C xenstored (4.17 or 4.20, `xenstored -N`) run
 * without a hypervisor: it defines the 17 Xen symbols the daemon imports (event channels, grant
 * tables, and xc_domain_getinfo in 4.17 / xc_domain_getinfo_single in 4.20) on top of the
 * simulated hypervisor's state folder ($XEN_SIM_STATE). Unversioned definitions here satisfy the
 * daemon's versioned references (libxenctrl_4.20.0, VERS_1.0). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#include "sim-state.h"
#include "sim-dominfo.h"

#define PAGE 4096

/* A harness that dies without cleaning up must not leave xenstored behind: with
 * XEN_MOCKS_PARENT_PID set, the daemon is killed when that parent goes away. */
__attribute__((constructor)) static void shim_init(void)
{
    const char *pp = getenv("XEN_MOCKS_PARENT_PID");
    if (pp && *pp) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != (pid_t)atoi(pp))
            _exit(1);
    }
}

/* ---- /proc/xen/xsd_port and /proc/xen/xsd_kva live in the state folder ---- */

static const char *redirect(const char *path, char *buf, size_t len)
{
    const char *dir = sim_state_dir();
    if (!path || !dir)
        return path;
    if (!strcmp(path, "/proc/xen/xsd_port"))
        snprintf(buf, len, "%s/xsd_port", dir);
    else if (!strcmp(path, "/proc/xen/xsd_kva"))
        snprintf(buf, len, "%s/ring-0", dir);
    else
        return path;
    return buf;
}

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef FILE *(*fopen_fn)(const char *, const char *);

static int call_open(const char *sym, const char *path, int flags, mode_t mode)
{
    open_fn real = (open_fn)dlsym(RTLD_NEXT, sym);
    char buf[4096];
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    return real(redirect(path, buf, sizeof(buf)), flags, mode);
}

#define MODE_ARG(flags, mode)                                                                  \
    do {                                                                                       \
        if (((flags) & O_CREAT) || ((flags) & O_TMPFILE) == O_TMPFILE) {                        \
            va_list ap;                                                                        \
            va_start(ap, flags);                                                               \
            mode = (mode_t)va_arg(ap, int);                                                    \
            va_end(ap);                                                                        \
        }                                                                                      \
    } while (0)

int open(const char *path, int flags, ...)
{
    mode_t mode = 0;
    MODE_ARG(flags, mode);
    return call_open("open", path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    mode_t mode = 0;
    MODE_ARG(flags, mode);
    return call_open("open64", path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    openat_fn real = (openat_fn)dlsym(RTLD_NEXT, "openat");
    char buf[4096];
    mode_t mode = 0;
    MODE_ARG(flags, mode);
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    return real(dirfd, redirect(path, buf, sizeof(buf)), flags, mode);
}

FILE *fopen(const char *path, const char *m)
{
    fopen_fn real = (fopen_fn)dlsym(RTLD_NEXT, "fopen");
    char buf[4096];
    if (!real) {
        errno = ENOSYS;
        return NULL;
    }
    return real(redirect(path, buf, sizeof(buf)), m);
}

/* ---- libxenctrl: only what xenstored uses ---- */

static int xc_dummy;

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
                                unsigned open_flags)
{
    (void)logger;
    (void)dombuild_logger;
    (void)open_flags;
    return (xc_interface *)&xc_dummy;
}

int xc_interface_close(xc_interface *xch)
{
    (void)xch;
    return 0;
}

#ifdef SIM_HAVE_XC_DOMINFO
int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms,
                      xc_dominfo_t *info)
{
    (void)xch;
    return sim_getinfo(sim_state_dir(), first_domid, max_doms, info);
}
#endif

/* What the 4.18+ daemons call instead (declared by xenctrl.h only from 4.18 on). */
int xc_domain_getinfo_single(xc_interface *xch, uint32_t domid, xc_domaininfo_t *info);
int xc_domain_getinfo_single(xc_interface *xch, uint32_t domid, xc_domaininfo_t *info)
{
    (void)xch;
    return sim_getinfo_single(sim_state_dir(), domid, info);
}

/* ---- event channels: one FIFO of 4-byte ports into xenstored, datagrams out to guests ---- */

struct xenevtchn_handle {
    int fd;
};

#define MAX_BINDINGS 4096
static struct {
    uint32_t port;
    uint32_t domid;
} bindings[MAX_BINDINGS];
static int nbindings;
static int notify_sock = -1;
/* Reported for a wake-up without data: not VIRQ_DOM_EXC, bound to no domain. */
static const uint32_t spurious_port = SIM_VIRQ_DOM_EXC_PORT + 1;

static int open_fifo(void)
{
    const char *dir = sim_state_dir();
    char path[4096];
    if (!dir)
        return -1;
    snprintf(path, sizeof(path), "%s/evtchn", dir);
    if (mkfifo(path, 0600) != 0 && errno != EEXIST)
        return -1;
    /* O_RDWR: never sees EOF when writers come and go, and never blocks in open. */
    return call_open("open", path, O_RDWR | O_NONBLOCK | O_CLOEXEC, 0);
}

xenevtchn_handle *xenevtchn_open(xentoollog_logger *logger, unsigned open_flags)
{
    xenevtchn_handle *h = calloc(1, sizeof(*h));
    (void)logger;
    (void)open_flags;
    if (!h)
        return NULL;
    h->fd = open_fifo();
    if (h->fd < 0) {
        free(h);
        return NULL;
    }
    return h;
}

xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fd, unsigned open_flags)
{
    /* Live update hands over the old fd: it is our FIFO already. */
    xenevtchn_handle *h = calloc(1, sizeof(*h));
    (void)logger;
    (void)open_flags;
    if (!h)
        return NULL;
    h->fd = fd;
    return h;
}

int xenevtchn_close(xenevtchn_handle *xce)
{
    if (xce) {
        close(xce->fd);
        free(xce);
    }
    return 0;
}

int xenevtchn_fd(xenevtchn_handle *xce)
{
    return xce->fd;
}

static int port_domid(uint32_t port, uint32_t *domid)
{
    int i;
    for (i = 0; i < nbindings; i++)
        if (bindings[i].port == port) {
            *domid = bindings[i].domid;
            return 0;
        }
    return -1;
}

int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port)
{
    const char *dir = sim_state_dir();
    struct sockaddr_un sa;
    uint32_t domid;
    (void)xce;
    if (!dir || port_domid(port, &domid) != 0)
        return 0;
    if (notify_sock < 0)
        notify_sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (notify_sock < 0)
        return 0;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/evt-%u.sock", dir, domid);
    /* No bridge listening, or its queue full: the guest is not waiting, drop the event. */
    sendto(notify_sock, &port, sizeof(port), MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&sa,
           sizeof(sa));
    return 0;
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid,
                                                     evtchn_port_t remote_port)
{
    int i;
    (void)xce;
    /* Local port = remote port: domain N's channel is 1000+N on both ends. */
    for (i = 0; i < nbindings; i++)
        if (bindings[i].port == remote_port) {
            bindings[i].domid = domid;
            return (xenevtchn_port_or_error_t)remote_port;
        }
    if (nbindings >= MAX_BINDINGS) {
        errno = ENOSPC;
        return -1;
    }
    bindings[nbindings].port = remote_port;
    bindings[nbindings].domid = domid;
    nbindings++;
    return (xenevtchn_port_or_error_t)remote_port;
}

xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *xce, unsigned int virq)
{
    (void)xce;
    (void)virq;
    return SIM_VIRQ_DOM_EXC_PORT;
}

int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port)
{
    int i;
    (void)xce;
    for (i = 0; i < nbindings; i++)
        if (bindings[i].port == port) {
            bindings[i] = bindings[--nbindings];
            break;
        }
    return 0;
}

xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce)
{
    uint32_t port;
    ssize_t r = read(xce->fd, &port, sizeof(port));
    /* xenstored exits on -1: a spurious wake-up reports a harmless non-VIRQ port instead. */
    if (r != (ssize_t)sizeof(port))
        return (xenevtchn_port_or_error_t)spurious_port;
    return (xenevtchn_port_or_error_t)port;
}

int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port)
{
    (void)xce;
    (void)port;
    return 0;
}

/* ---- grant tables: domain N's ring page is the file ring-N, mapped shared ---- */

struct xengnttab_handle {
    int unused;
};

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    (void)logger;
    (void)open_flags;
    return calloc(1, sizeof(struct xengnttab_handle));
}

int xengnttab_close(xengnttab_handle *xgt)
{
    free(xgt);
    return 0;
}

int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants)
{
    (void)xgt;
    (void)nr_grants;
    return 0;
}

void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot)
{
    const char *dir = sim_state_dir();
    char path[4096];
    void *p;
    int fd;
    (void)xgt;
    (void)ref;
    if (!dir)
        return NULL;
    snprintf(path, sizeof(path), "%s/ring-%u", dir, domid);
    fd = call_open("open", path, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    p = mmap(NULL, PAGE, prot, MAP_SHARED, fd, 0);
    close(fd);
    return p == MAP_FAILED ? NULL : p;
}

int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count)
{
    (void)xgt;
    return munmap(start_address, (size_t)count * PAGE);
}
