#!/bin/sh
# Run by deploy-ready.service once the dom0 reached multi-user.target (output: the Xen console):
# prints DEPLOY-READY with what systemd and Xen say, then host a runs the scenarios.
H=$(hostname)
up=$(cut -d' ' -f1 /proc/uptime)
failed=$(systemctl --failed --no-legend --plain 2>/dev/null | awk '{ print $1 }' | tr '\n' ' ')
xenv=$(xl info 2>/dev/null | awk '/^xen_version/ { print $3 }')
echo "DEPLOY-READY ${H#host-} uptime=${up}s xen=${xenv:-?} state=$(systemctl is-system-running 2>/dev/null) failed-units=[${failed% }] ssh=$(systemctl is-active ssh) xen.service=$(systemctl is-active xen)"
[ "$H" = host-a ] || exit 0
exec sh /mnt/host/test/deploy/dom0/scenarios.sh
