// The Xen releases the agent supports and what it relies on in each, as recorded from that
// release's own headers (gcc offsetof/sizeof programs; see docs/support-matrix.md for how each
// was checked). Pure data: library-selection.ts chooses a release, libxenctrl.ts checks it.

/** Byte offsets in xc_domaininfo_t (= struct xen_domctl_getdomaininfo) on x86_64. */
export interface DomainInfoLayout {
  size: number;
  offsets: {
    domain: number;
    flags: number;
    tot_pages: number;
    max_pages: number;
    outstanding_pages: number;
    shr_pages: number;
    paged_pages: number;
    shared_info_frame: number;
    cpu_time: number;
    nr_online_vcpus: number;
    max_vcpu_id: number;
    ssidref: number;
    handle: number;
    cpupool: number;
    gpaddr_bits: number;
    arch_config: number;
  };
}

export interface XenRelease {
  /** "4.<minor>", as /sys/hypervisor/version reads. */
  version: string;
  major: 4;
  minor: number;
  /** XEN_DOMCTL_INTERFACE_VERSION: the hypervisor refuses (EACCES) a domctl of another value. */
  domctlInterfaceVersion: number;
  /** xc_domain_getinfo()/xc_dominfo_t exist (removed in 4.18); we never call it. */
  hasGetinfo: boolean;
  /** xc_domain_getinfo_single() exists (added in 4.18); the 4.20 xenstored imports it. */
  hasGetinfoSingle: boolean;
  /** How this record was verified against the release (kept in the table so the docs can cite it). */
  checkedWith: string;
  domainInfo: DomainInfoLayout;
}

/**
 * xc_domaininfo_t as gcc lays it out for each release below. The records are written out per
 * release, not shared, so that a release with another layout only needs its own entry.
 */
const layout = (): DomainInfoLayout => ({
  size: 112,
  offsets: {
    domain: 0,
    flags: 4,
    tot_pages: 8,
    max_pages: 16,
    outstanding_pages: 24,
    shr_pages: 32,
    paged_pages: 40,
    shared_info_frame: 48,
    cpu_time: 56,
    nr_online_vcpus: 64,
    max_vcpu_id: 68,
    ssidref: 72,
    handle: 76,
    cpupool: 92,
    gpaddr_bits: 96,
    arch_config: 104,
  },
});

const SOURCES = 'gcc offsetof against xen/include/public of the RELEASE tag';

export const XEN_RELEASES: readonly XenRelease[] = [
  {
    version: '4.17',
    major: 4,
    minor: 17,
    domctlInterfaceVersion: 0x15,
    hasGetinfo: true,
    hasGetinfoSingle: false,
    checkedWith: `Debian 12 libxen-dev 4.17 headers; ${SOURCES}-4.17.0; e2e on a real 4.17`,
    domainInfo: layout(),
  },
  {
    version: '4.18',
    major: 4,
    minor: 18,
    domctlInterfaceVersion: 0x16,
    hasGetinfo: false,
    hasGetinfoSingle: true,
    checkedWith: `${SOURCES}-4.18.0`,
    domainInfo: layout(),
  },
  {
    version: '4.19',
    major: 4,
    minor: 19,
    domctlInterfaceVersion: 0x17,
    hasGetinfo: false,
    hasGetinfoSingle: true,
    checkedWith: `${SOURCES}-4.19.0`,
    domainInfo: layout(),
  },
  {
    version: '4.20',
    major: 4,
    minor: 20,
    domctlInterfaceVersion: 0x17,
    hasGetinfo: false,
    hasGetinfoSingle: true,
    checkedWith: `Debian 13 libxen-dev 4.20 headers; ${SOURCES}-4.20.0; e2e on a real 4.20`,
    domainInfo: layout(),
  },
  {
    version: '4.21',
    major: 4,
    minor: 21,
    domctlInterfaceVersion: 0x17,
    hasGetinfo: false,
    hasGetinfoSingle: true,
    checkedWith: `${SOURCES}-4.21.0`,
    domainInfo: layout(),
  },
  {
    version: '4.22',
    major: 4,
    minor: 22,
    domctlInterfaceVersion: 0x18,
    hasGetinfo: false,
    hasGetinfoSingle: true,
    checkedWith: `${SOURCES}-4.22.0`,
    domainInfo: layout(),
  },
];

export const SUPPORTED_XEN_VERSIONS: readonly string[] = XEN_RELEASES.map((r) => r.version);

export function findRelease(major: number, minor: number): XenRelease | undefined {
  return XEN_RELEASES.find((r) => r.major === major && r.minor === minor);
}
