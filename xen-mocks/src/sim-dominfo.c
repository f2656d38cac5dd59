/* Translation of a simulated domain (dom-N file) into libxenctrl's info layouts: xc_domaininfo_t
 * (= xen_domctl_getdomaininfo_t, flags word; 4.17-4.22) and xc_dominfo_t (bitfields; 4.17 only). */
#define _GNU_SOURCE
#include "sim-dominfo.h"

#include <errno.h>
#include <string.h>

#include "sim-state.h"

#ifdef SIM_HAVE_XC_DOMINFO
static void fill_dominfo(const struct sim_dom *d, xc_dominfo_t *i)
{
    memset(i, 0, sizeof(*i));
    i->domid = d->domid;
    i->ssidref = d->ssidref;
    i->dying = d->dying ? 1 : 0;
    i->shutdown = d->shutdown ? 1 : 0;
    i->crashed = (d->shutdown && d->shutdown_reason == SHUTDOWN_crash) ? 1 : 0;
    i->paused = d->paused ? 1 : 0;
    i->running = (!d->paused && !d->shutdown && !d->dying) ? 1 : 0;
    i->blocked = 0;
    i->hvm = d->hvm ? 1 : 0;
    i->hap = d->hvm ? 1 : 0;
    i->shutdown_reason = d->shutdown ? d->shutdown_reason : 0;
    i->nr_pages = d->tot_pages;
    i->max_memkb = d->max_memkb;
    i->nr_online_vcpus = d->max_vcpus;
    i->max_vcpu_id = d->max_vcpus ? d->max_vcpus - 1 : 0;
    i->cpupool = d->cpupool;
    i->gpaddr_bits = 52;
    memcpy(i->handle, d->handle, sizeof(i->handle));
}
#endif

static void fill_domaininfo(const struct sim_dom *d, xc_domaininfo_t *i)
{
    memset(i, 0, sizeof(*i));
    i->domain = (domid_t)d->domid;
    if (d->dying)
        i->flags |= XEN_DOMINF_dying;
    if (d->hvm)
        i->flags |= XEN_DOMINF_hvm_guest | XEN_DOMINF_hap;
    if (d->shutdown)
        i->flags |= XEN_DOMINF_shutdown |
                    ((d->shutdown_reason & XEN_DOMINF_shutdownmask) << XEN_DOMINF_shutdownshift);
    if (d->paused)
        i->flags |= XEN_DOMINF_paused;
    if (!d->paused && !d->shutdown && !d->dying)
        i->flags |= XEN_DOMINF_running;
    i->tot_pages = d->tot_pages;
    i->max_pages = d->max_memkb / 4;
    i->nr_online_vcpus = d->max_vcpus;
    i->max_vcpu_id = d->max_vcpus ? d->max_vcpus - 1 : 0;
    i->ssidref = d->ssidref;
    i->cpupool = d->cpupool;
    i->gpaddr_bits = 52;
    memcpy(i->handle, d->handle, sizeof(i->handle));
}

#ifdef SIM_HAVE_XC_DOMINFO
int sim_getinfo(const char *dir, uint32_t first_domid, unsigned int max_doms, xc_dominfo_t *info)
{
    uint32_t ids[256];
    struct sim_dom d;
    int n, i, k = 0;

    if (max_doms == 0)
        return 0;
    memset(info, 0, max_doms * sizeof(*info));
    n = sim_dom_list(dir, first_domid, ids, max_doms < 256 ? (int)max_doms : 256);
    for (i = 0; i < n; i++)
        if (sim_dom_read(dir, ids[i], &d) == 0)
            fill_dominfo(&d, &info[k++]);
    if (k == 0) {
        /* As 4.17: no domain at or above first_domid -> the domctl's ESRCH, -1. */
        errno = ESRCH;
        return -1;
    }
    return k;
}
#endif

int sim_getinfolist(const char *dir, uint32_t first_domid, unsigned int max_doms, xc_domaininfo_t *info)
{
    uint32_t ids[256];
    struct sim_dom d;
    int n, i, k = 0;

    if (max_doms == 0)
        return 0;
    n = sim_dom_list(dir, first_domid, ids, max_doms < 256 ? (int)max_doms : 256);
    for (i = 0; i < n; i++)
        if (sim_dom_read(dir, ids[i], &d) == 0)
            fill_domaininfo(&d, &info[k++]);
    return k;
}

int sim_getinfo_single(const char *dir, uint32_t domid, xc_domaininfo_t *info)
{
    struct sim_dom d;
    uint32_t id;
    /* As the domctl: the first domain at or above domid, refused unless it is domid itself. */
    if (sim_dom_list(dir, domid, &id, 1) != 1 || id != domid || sim_dom_read(dir, id, &d) != 0) {
        errno = ESRCH;
        return -1;
    }
    if (info)
        fill_domaininfo(&d, info);
    return 0;
}
