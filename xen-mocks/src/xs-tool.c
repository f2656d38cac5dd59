/* xs-tool: the few privileged XenStore calls xenstore-utils lack, through the real libxenstore
 * (honours XENSTORED_PATH). Usage:
 *   xs-tool introduce <domid> <mfn> <port> | release <domid> | resume <domid>
 *   xs-tool set-target <domid> <target> | is-introduced <domid> */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xenstore.h>

static unsigned num(const char *s)
{
    char *end;
    unsigned long v = strtoul(s, &end, 0);
    if (!*s || *end) {
        fprintf(stderr, "xs-tool: not a number: %s\n", s);
        exit(2);
    }
    return (unsigned)v;
}

int main(int argc, char **argv)
{
    struct xs_handle *h;
    bool ok;

    if (argc < 3) {
        fprintf(stderr, "usage: xs-tool introduce|release|resume|set-target|is-introduced ...\n");
        return 2;
    }
    h = xs_open(0);
    if (!h) {
        perror("xs-tool: xs_open");
        return 3;
    }
    if (!strcmp(argv[1], "introduce") && argc == 5)
        ok = xs_introduce_domain(h, num(argv[2]), num(argv[3]), num(argv[4]));
    else if (!strcmp(argv[1], "release") && argc == 3)
        ok = xs_release_domain(h, num(argv[2]));
    else if (!strcmp(argv[1], "resume") && argc == 3)
        ok = xs_resume_domain(h, num(argv[2]));
    else if (!strcmp(argv[1], "set-target") && argc == 4)
        ok = xs_set_target(h, num(argv[2]), num(argv[3]));
    else if (!strcmp(argv[1], "is-introduced") && argc == 3) {
        ok = true;
        errno = 0;
        printf("%s\n", xs_is_domain_introduced(h, num(argv[2])) ? "T" : "F");
    } else {
        fprintf(stderr, "xs-tool: bad arguments\n");
        xs_close(h);
        return 2;
    }
    if (!ok) {
        fprintf(stderr, "xs-tool %s: %s\n", argv[1], strerror(errno));
        xs_close(h);
        return 1;
    }
    xs_close(h);
    return 0;
}
