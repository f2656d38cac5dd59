/* Fills libxenctrl's xc_dominfo_t / xc_domaininfo_t from the simulated state folder, with the
 * semantics of Xen 4.17 (getinfo returns the next existing domains from first_domid on). */
#ifndef XEN_MOCKS_SIM_DOMINFO_H
#define XEN_MOCKS_SIM_DOMINFO_H

#include <xenctrl.h>

int sim_getinfo(const char *dir, uint32_t first_domid, unsigned int max_doms, xc_dominfo_t *info);
int sim_getinfolist(const char *dir, uint32_t first_domid, unsigned int max_doms, xc_domaininfo_t *info);

#endif
