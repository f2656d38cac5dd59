/* Fills libxenctrl's xc_domaininfo_t (every release) and xc_dominfo_t (4.17 only) from the
 * simulated state folder, with Xen's semantics (getinfo returns the next existing domains from
 * first_domid on; getinfo_single only the asked one). Builds against the 4.17 or the 4.20 headers. */
#ifndef XEN_MOCKS_SIM_DOMINFO_H
#define XEN_MOCKS_SIM_DOMINFO_H

#include <xenctrl.h>

/* xc_domain_getinfo()/xc_dominfo_t left in 4.18, whose domctl interface version is 0x16. */
#if XEN_DOMCTL_INTERFACE_VERSION < 0x16
#define SIM_HAVE_XC_DOMINFO 1
int sim_getinfo(const char *dir, uint32_t first_domid, unsigned int max_doms, xc_dominfo_t *info);
#endif
int sim_getinfolist(const char *dir, uint32_t first_domid, unsigned int max_doms, xc_domaininfo_t *info);
/* xc_domain_getinfo_single (4.18+): 0, or -1 with ESRCH when domid does not exist. */
int sim_getinfo_single(const char *dir, uint32_t domid, xc_domaininfo_t *info);

#endif
