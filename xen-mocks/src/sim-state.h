/* Simulated hypervisor state shared by the xenstored shim and the simulated libxenctrl/libxenguest.
 * One folder ($XEN_SIM_STATE) holds one key=value file per domain plus the event-channel FIFO;
 * every writer replaces whole files (temp + rename) under a per-domain mkdir lock. */
#ifndef XEN_MOCKS_SIM_STATE_H
#define XEN_MOCKS_SIM_STATE_H

#include <stdint.h>

#define SIM_VIRQ_DOM_EXC_PORT 1u    /* local port xenstored gets for VIRQ_DOM_EXC */
#define SIM_XENBUS_PORT_BASE 1000u  /* domain N's xenbus event channel is 1000+N */
#define SIM_MAX_DOMID 0x7fefu       /* DOMID_FIRST_RESERVED - 1 */
#define SIM_MAX_EXTRA 16

struct sim_dom {
    uint32_t domid;
    unsigned paused;           /* controller pause count, as Xen keeps it */
    int shutdown;              /* 1 = shut down (any reason, suspend included) */
    unsigned shutdown_reason;  /* SHUTDOWN_* from xen/sched.h, valid when shutdown */
    int dying;
    int hvm;
    unsigned max_vcpus;
    unsigned long max_memkb;
    unsigned long tot_pages;
    uint32_t ssidref;
    uint32_t cpupool;
    unsigned resume_count;     /* how often xc_domain_resume succeeded */
    int last_resume_fast;      /* -1 never resumed, else the `fast` argument */
    uint8_t handle[16];
    int n_extra;               /* lines we do not understand, kept verbatim */
    char extra[SIM_MAX_EXTRA][160];
};

/* Looks up `key=` among the lines kept verbatim (e.g. hvm_param_0); 0 when found. */
int sim_dom_extra(const struct sim_dom *d, const char *key, unsigned long long *value);

/* Folder from $XEN_SIM_STATE, or NULL (errno = ENOENT) when unset. Every other call takes the
 * folder explicitly so that one process may drive several simulated hypervisors. */
const char *sim_state_dir(void);

/* Fills *d for domid; returns 0, or -1 with errno = ESRCH if the domain does not exist
 * (domain 0 always exists, with defaults, even without a file). */
int sim_dom_read(const char *dir, uint32_t domid, struct sim_dom *d);

/* Lists existing domids >= first in ascending order; returns how many (up to max). */
int sim_dom_list(const char *dir, uint32_t first, uint32_t *out, int max);

/* Atomically replaces the domain's file. */
int sim_dom_write(const char *dir, const struct sim_dom *d);

/* Per-domain cross-process lock (mkdir dom-N.lock); a lock older than 5 s is broken. */
int sim_dom_lock(const char *dir, uint32_t domid);
void sim_dom_unlock(const char *dir, uint32_t domid);

/* Writes a 4-byte port into the event FIFO ($XEN_SIM_STATE/evtchn); a missing reader is
 * not an error (no xenstored running). */
int sim_evtchn_send(const char *dir, uint32_t port);

#endif
