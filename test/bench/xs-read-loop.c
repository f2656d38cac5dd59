/* Reference for the XenStore benchmark: libxenstore's own sequential xs_read loop over the
 * daemon socket (XENSTORED_PATH). Prints one line "ops_per_sec <n>"; exit 2 on any failure. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <xenstore.h>

int main(int argc, char **argv)
{
    const char *key = argc > 1 ? argv[1] : "/bench/key";
    long n = argc > 2 ? atol(argv[2]) : 20000;
    struct xs_handle *h = xs_open(0);
    struct timespec a, b;
    unsigned int len;
    long i;

    if (!h || n <= 0) {
        perror("xs_open");
        return 2;
    }
    for (i = 0; i < 200; i++) /* warm-up */
        free(xs_read(h, XBT_NULL, key, &len));
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (i = 0; i < n; i++) {
        void *v = xs_read(h, XBT_NULL, key, &len);
        if (!v) {
            perror("xs_read");
            return 2;
        }
        free(v);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("ops_per_sec %.0f\n", n / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9));
    xs_close(h);
    return 0;
}
