/* libxenctrl-sim.so: the libxenctrl calls the agent uses, with the same names and ABI as
 * xenctrl.h of the Xen release installed here (4.17 or 4.20: one ABI for them), backed by the simulated hypervisor's state folder ($XEN_SIM_STATE). State changes
 * that Xen reports through VIRQ_DOM_EXC (shutdown, destroy) raise it in xenstored's FIFO. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <xenctrl.h>

#include "sim-dominfo.h"
#include "sim-state.h"

struct xc_interface_core {
    int magic;
    char dir[4096]; /* $XEN_SIM_STATE when the handle was opened */
};

#define XCH_MAGIC 0x58435349

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
                                unsigned open_flags)
{
    struct xc_interface_core *h;
    (void)logger;
    (void)dombuild_logger;
    (void)open_flags;
    /* The real library fails when it cannot reach the hypervisor: ours when there is none. */
    const char *dir = sim_state_dir();
    struct stat st;
    if (!dir)
        return NULL;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        errno = ENOENT;
        return NULL;
    }
    h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->magic = XCH_MAGIC;
    snprintf(h->dir, sizeof(h->dir), "%s", dir);
    return h;
}

int xc_interface_close(xc_interface *xch)
{
    if (xch)
        xch->magic = 0;
    free(xch);
    return 0;
}

#ifdef SIM_HAVE_XC_DOMINFO
int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms,
                      xc_dominfo_t *info)
{
    if (!xch || xch->magic != XCH_MAGIC || !info) {
        errno = EINVAL;
        return -1;
    }
    return sim_getinfo(xch->dir, first_domid, max_doms, info);
}
#endif

/* Declared by xenctrl.h from 4.18 on; defined here with either header. */
int xc_domain_getinfo_single(xc_interface *xch, uint32_t domid, xc_domaininfo_t *info);
int xc_domain_getinfo_single(xc_interface *xch, uint32_t domid, xc_domaininfo_t *info)
{
    if (!xch || xch->magic != XCH_MAGIC) {
        errno = EINVAL;
        return -1;
    }
    return sim_getinfo_single(xch->dir, domid, info);
}

int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain, unsigned int max_domains,
                          xc_domaininfo_t *info)
{
    if (!xch || xch->magic != XCH_MAGIC || !info) {
        errno = EINVAL;
        return -1;
    }
    return sim_getinfolist(xch->dir, first_domain, max_domains, info);
}

/* Read-modify-write of one domain under its lock. `op` returns 0 or an errno value; `virq`
 * says whether a successful change is one Xen announces through VIRQ_DOM_EXC. */
typedef int (*dom_op)(struct sim_dom *d, long arg, int *virq);

static int with_domain(xc_interface *xch, uint32_t domid, dom_op op, long arg)
{
    struct sim_dom d;
    int rc, virq = 0;

    if (!xch || xch->magic != XCH_MAGIC) {
        errno = EINVAL;
        return -1;
    }
    if (domid > SIM_MAX_DOMID) {
        errno = ESRCH;
        return -1;
    }
    if (sim_dom_lock(xch->dir, domid) != 0)
        return -1;
    if (sim_dom_read(xch->dir, domid, &d) != 0) {
        sim_dom_unlock(xch->dir, domid);
        errno = ESRCH;
        return -1;
    }
    rc = op(&d, arg, &virq);
    if (rc == 0 && sim_dom_write(xch->dir, &d) != 0)
        rc = errno ? errno : EIO;
    sim_dom_unlock(xch->dir, domid);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    if (virq)
        sim_evtchn_send(xch->dir, SIM_VIRQ_DOM_EXC_PORT);
    return 0;
}

static int op_pause(struct sim_dom *d, long arg, int *virq)
{
    (void)arg;
    (void)virq;
    /* Xen refuses to pause the calling domain (dom0 here) or a dying one. */
    if (d->domid == 0 || d->dying)
        return EINVAL;
    if (d->paused >= 255)
        return EBUSY;
    d->paused++;
    return 0;
}

static int op_unpause(struct sim_dom *d, long arg, int *virq)
{
    (void)arg;
    (void)virq;
    if (d->domid == 0 || d->dying)
        return EINVAL;
    /* Unpausing a domain nobody paused is EINVAL in Xen 4.17 (controller pause count). */
    if (d->paused == 0)
        return EINVAL;
    d->paused--;
    return 0;
}

static int op_shutdown(struct sim_dom *d, long reason, int *virq)
{
    if (reason < SHUTDOWN_poweroff || reason > SHUTDOWN_soft_reset)
        return EINVAL;
    if (d->domid == 0)
        return EPERM;
    if (d->dying)
        return EINVAL;
    /* A domain already shutting down keeps its first reason, as Xen's domain_shutdown does. */
    if (d->shutdown)
        return 0;
    d->shutdown = 1;
    d->shutdown_reason = (unsigned)reason;
    *virq = 1;
    return 0;
}

static int op_destroy(struct sim_dom *d, long arg, int *virq)
{
    (void)arg;
    if (d->domid == 0)
        return EPERM;
    if (!d->dying) {
        d->dying = 1;
        *virq = 1;
    }
    return 0;
}

int xc_domain_pause(xc_interface *xch, uint32_t domid)
{
    return with_domain(xch, domid, op_pause, 0);
}

int xc_domain_unpause(xc_interface *xch, uint32_t domid)
{
    return with_domain(xch, domid, op_unpause, 0);
}

int xc_domain_shutdown(xc_interface *xch, uint32_t domid, int reason)
{
    return with_domain(xch, domid, op_shutdown, reason);
}

int xc_domain_destroy(xc_interface *xch, uint32_t domid)
{
    return with_domain(xch, domid, op_destroy, 0);
}

/* Used by libxenguest-sim, which links against this library as the real one does. */
static int op_resume(struct sim_dom *d, long fast, int *virq)
{
    (void)virq;
    if (d->dying)
        return EINVAL;
    /* Cooperative resume only for a domain suspended (xg_resume.c modify_returncode). */
    if (fast && !(d->shutdown && d->shutdown_reason == SHUTDOWN_suspend))
        return EINVAL;
    /* XEN_DOMCTL_resumedomain: clears the shutdown; the controller pause count stays. */
    d->shutdown = 0;
    d->shutdown_reason = 0;
    d->resume_count++;
    d->last_resume_fast = fast ? 1 : 0;
    return 0;
}

int xc_sim_domain_resume(xc_interface *xch, uint32_t domid, int fast);
int xc_sim_domain_resume(xc_interface *xch, uint32_t domid, int fast)
{
    return with_domain(xch, domid, op_resume, fast ? 1 : 0);
}

/* HVM parameters come from `hvm_param_<index>=<value>` lines (e.g. hvm_param_0 is
 * HVM_PARAM_CALLBACK_IRQ: non-zero means the guest has PV drivers); unset ones read 0. */
int xc_hvm_param_get(xc_interface *handle, uint32_t dom, uint32_t param, uint64_t *value)
{
    struct sim_dom d;
    char key[48];
    unsigned long long v = 0;

    if (!handle || handle->magic != XCH_MAGIC || !value) {
        errno = EINVAL;
        return -1;
    }
    if (sim_dom_read(handle->dir, dom, &d) != 0) {
        errno = ESRCH;
        return -1;
    }
    if (!d.hvm) {
        errno = EINVAL; /* Xen: HVMOP_get_param on a PV domain */
        return -1;
    }
    snprintf(key, sizeof(key), "hvm_param_%u", param);
    sim_dom_extra(&d, key, &v);
    *value = v;
    return 0;
}
