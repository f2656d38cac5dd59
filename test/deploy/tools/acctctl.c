/*
 * acctctl [FILE]: switches the kernel's BSD process accounting on (into FILE, which must exist)
 * or off. The deployment e2e's --profile uses it on the emulated dom0s to see the CPU of every
 * short-lived process (ssh sessions, rsync's server, hotplug scripts) around a migration; the
 * dom0 image has no acct package. Built static on the machine that runs the e2e.
 */
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (acct(argc > 1 ? argv[1] : NULL) != 0) {
        perror("acct");
        return 1;
    }
    return 0;
}
