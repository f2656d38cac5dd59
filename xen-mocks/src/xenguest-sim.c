/* libxenguest-sim.so: xc_domain_resume with libxenguest's name and ABI (xenguest.h, unchanged 4.17-4.22),
 * implemented by libxenctrl-sim.so on the simulated state folder. */
#define _GNU_SOURCE
#include <xenctrl.h>
#include <xenguest.h>

int xc_sim_domain_resume(xc_interface *xch, uint32_t domid, int fast);

int xc_domain_resume(xc_interface *xch, uint32_t domid, int fast)
{
    return xc_sim_domain_resume(xch, domid, fast);
}
