/* The simulated hypervisor's state folder: parse, list, lock and atomically rewrite dom-N files,
 * and deliver event-channel ports into xenstored's FIFO. Shared by xsd-shim.so and the
 * simulated libraries so that xenstored and the agent see one hypervisor. */
#define _GNU_SOURCE
#include "sim-state.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *sim_state_dir(void)
{
    const char *d = getenv("XEN_SIM_STATE");
    if (!d || !*d) {
        errno = ENOENT;
        return NULL;
    }
    return d;
}

static void sim_defaults(struct sim_dom *d, uint32_t domid)
{
    memset(d, 0, sizeof(*d));
    d->domid = domid;
    d->max_vcpus = 1;
    d->max_memkb = 262144;
    d->tot_pages = 65536;
    d->last_resume_fast = -1;
    /* A recognisable, per-domain handle (UUID) so tests can tell domains apart. */
    d->handle[0] = 0x5e;
    d->handle[14] = (uint8_t)(domid >> 8);
    d->handle[15] = (uint8_t)domid;
}

static int parse_handle(const char *s, uint8_t out[16])
{
    int n = 0;
    while (*s && n < 16) {
        unsigned v;
        if (*s == '-') {
            s++;
            continue;
        }
        if (sscanf(s, "%2x", &v) != 1)
            return -1;
        out[n++] = (uint8_t)v;
        s += 2;
    }
    return n == 16 ? 0 : -1;
}

int sim_dom_read(const char *dir, uint32_t domid, struct sim_dom *d)
{
    char path[4096], line[256];
    FILE *f;
    int exists = 1;

    sim_defaults(d, domid);
    if (!dir)
        return domid == 0 ? 0 : (errno = ESRCH, -1);
    snprintf(path, sizeof(path), "%s/dom-%u", dir, domid);
    f = fopen(path, "re");
    if (!f) {
        if (domid == 0)
            return 0;
        errno = ESRCH;
        return -1;
    }
    while (fgets(line, sizeof(line), f)) {
        char *eq, *key = line, *val;
        size_t l = strlen(line);
        while (l && (line[l - 1] == '\n' || line[l - 1] == '\r'))
            line[--l] = 0;
        if (!l || line[0] == '#')
            continue;
        eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = 0;
        val = eq + 1;
        if (!strcmp(key, "exists"))
            exists = atoi(val) != 0;
        else if (!strcmp(key, "paused"))
            d->paused = (unsigned)strtoul(val, NULL, 10);
        else if (!strcmp(key, "shutdown"))
            d->shutdown = atoi(val) != 0;
        else if (!strcmp(key, "shutdown_reason"))
            d->shutdown_reason = (unsigned)strtoul(val, NULL, 10);
        else if (!strcmp(key, "dying"))
            d->dying = atoi(val) != 0;
        else if (!strcmp(key, "hvm"))
            d->hvm = atoi(val) != 0;
        else if (!strcmp(key, "max_vcpus"))
            d->max_vcpus = (unsigned)strtoul(val, NULL, 10);
        else if (!strcmp(key, "max_memkb"))
            d->max_memkb = strtoul(val, NULL, 10);
        else if (!strcmp(key, "tot_pages"))
            d->tot_pages = strtoul(val, NULL, 10);
        else if (!strcmp(key, "ssidref"))
            d->ssidref = (uint32_t)strtoul(val, NULL, 10);
        else if (!strcmp(key, "cpupool"))
            d->cpupool = (uint32_t)strtoul(val, NULL, 10);
        else if (!strcmp(key, "resume_count"))
            d->resume_count = (unsigned)strtoul(val, NULL, 10);
        else if (!strcmp(key, "last_resume_fast"))
            d->last_resume_fast = atoi(val);
        else if (!strcmp(key, "handle"))
            parse_handle(val, d->handle);
        else if (d->n_extra < SIM_MAX_EXTRA) {
            *eq = '=';
            snprintf(d->extra[d->n_extra++], sizeof(d->extra[0]), "%s", line);
        }
    }
    fclose(f);
    if (!d->max_vcpus)
        d->max_vcpus = 1;
    if (!exists && domid != 0) {
        errno = ESRCH;
        return -1;
    }
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int sim_dom_list(const char *dir, uint32_t first, uint32_t *out, int max)
{
    uint32_t ids[1024];
    int n = 0, have0 = 0, i, k = 0;
    struct sim_dom d;

    if (dir) {
        DIR *dh = opendir(dir);
        struct dirent *e;
        while (dh && (e = readdir(dh)) && n < 1024) {
            char *end;
            unsigned long v;
            if (strncmp(e->d_name, "dom-", 4) != 0)
                continue;
            v = strtoul(e->d_name + 4, &end, 10);
            if (*end || end == e->d_name + 4 || v > SIM_MAX_DOMID)
                continue;
            if (v == 0)
                have0 = 1;
            ids[n++] = (uint32_t)v;
        }
        if (dh)
            closedir(dh);
    }
    if (!have0 && n < 1024)
        ids[n++] = 0;
    qsort(ids, (size_t)n, sizeof(ids[0]), cmp_u32);
    for (i = 0; i < n && k < max; i++) {
        if (ids[i] < first)
            continue;
        if (sim_dom_read(dir, ids[i], &d) == 0)
            out[k++] = ids[i];
    }
    return k;
}

int sim_dom_write(const char *dir, const struct sim_dom *d)
{
    char path[4096], tmp[4200];
    FILE *f;
    int i;

    if (!dir)
        return -1;
    snprintf(path, sizeof(path), "%s/dom-%u", dir, d->domid);
    snprintf(tmp, sizeof(tmp), "%s/.dom-%u.%d.tmp", dir, d->domid, (int)getpid());
    f = fopen(tmp, "we");
    if (!f)
        return -1;
    fprintf(f,
            "exists=1\npaused=%u\nshutdown=%d\nshutdown_reason=%u\ndying=%d\nhvm=%d\n"
            "max_vcpus=%u\nmax_memkb=%lu\ntot_pages=%lu\nssidref=%u\ncpupool=%u\n"
            "resume_count=%u\nlast_resume_fast=%d\nhandle=",
            d->paused, d->shutdown, d->shutdown_reason, d->dying, d->hvm, d->max_vcpus,
            d->max_memkb, d->tot_pages, d->ssidref, d->cpupool, d->resume_count,
            d->last_resume_fast);
    for (i = 0; i < 16; i++)
        fprintf(f, "%02x%s", d->handle[i], (i == 3 || i == 5 || i == 7 || i == 9) ? "-" : "");
    fputc('\n', f);
    for (i = 0; i < d->n_extra; i++)
        fprintf(f, "%s\n", d->extra[i]);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        errno = e;
        return -1;
    }
    return 0;
}

int sim_dom_lock(const char *dir, uint32_t domid)
{
    char path[4096];
    struct timespec ts = { 0, 1000000 };
    int tries;

    if (!dir)
        return -1;
    snprintf(path, sizeof(path), "%s/dom-%u.lock", dir, domid);
    for (tries = 0; tries < 5000; tries++) {
        struct stat st;
        if (mkdir(path, 0700) == 0)
            return 0;
        if (errno != EEXIST)
            return -1;
        /* A holder that crashed leaves the lock behind: break it after 5 s. */
        if (stat(path, &st) == 0 && time(NULL) - st.st_mtime > 5)
            rmdir(path);
        nanosleep(&ts, NULL);
    }
    errno = ETIMEDOUT;
    return -1;
}

void sim_dom_unlock(const char *dir, uint32_t domid)
{
    char path[4096];

    if (!dir)
        return;
    snprintf(path, sizeof(path), "%s/dom-%u.lock", dir, domid);
    rmdir(path);
}

int sim_evtchn_send(const char *dir, uint32_t port)
{
    char path[4096];
    int fd;
    ssize_t r;

    if (!dir)
        return -1;
    snprintf(path, sizeof(path), "%s/evtchn", dir);
    /* O_NONBLOCK: ENXIO when xenstored is not running, EAGAIN when the FIFO is full; the
     * event is then dropped, as an event to a closed channel would be. */
    fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -1;
    r = write(fd, &port, sizeof(port));
    close(fd);
    return r == (ssize_t)sizeof(port) ? 0 : -1;
}

int sim_dom_extra(const struct sim_dom *d, const char *key, unsigned long long *value)
{
    size_t kl = strlen(key);
    int i;
    for (i = 0; i < d->n_extra; i++)
        if (!strncmp(d->extra[i], key, kl) && d->extra[i][kl] == '=') {
            *value = strtoull(d->extra[i] + kl + 1, NULL, 0);
            return 0;
        }
    return -1;
}
