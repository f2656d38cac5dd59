#!/bin/sh
# The deployment e2e's stateful device tool (Xen's external-device-migrate contract, see
# docs/protocol.md): the device's state is a file /var/lib/deploy-dev/<domname>.state that must
# arrive on the destination. -step 0: the state exists here; 1: copy it to the destination as
# <name>.state.incoming; 2: copy again (the final state, guest suspended); 3: the destination
# verifies and takes it (rename), the source drops its copy. -recover: the state comes back to
# the source if it had left, and nothing of it stays on the destination. A flag file on the DESTINATION,
# /var/lib/deploy-dev/refuse-step-<n>, makes step n fail there (scenario b); a file on the
# SOURCE, /var/lib/deploy-dev/slow-step-<n>-<s>, makes step n wait <s> seconds first (c, d).
D=/var/lib/deploy-dev
LOG=$D/tool.log
step= host= name= rec=0
while [ $# -gt 0 ]; do
  case $1 in
    -step) step=$2; shift ;;
    -host) host=$2; shift ;;
    -domname) name=$2; shift ;;
    -recover) rec=1 ;;
  esac
  shift
done
echo "$(date +%s.%N) step=$step host=$host name=$name recover=$rec domid=$DEVMIGRATE_DOMID job=$DEVMIGRATE_JOB_ID" >>"$LOG" 2>/dev/null
S=$D/$name.state
remote() { ssh -o BatchMode=yes "$host" "$@"; }
# One ssh per step (each costs seconds of emulated CPU, in the guest's downtime at steps 2 and 3):
# the destination's refusal flag is looked at by the same remote command, which then exits 3.
refuse_check() { echo "if test -e $D/refuse-step-$1; then exit 3; fi"; }
failed() {
  [ "$1" = 3 ] && { echo "Error: destination $host refuses step $step (test flag)"; exit 1; }
  echo "Error: $2"
  exit 1
}
if [ $rec = 1 ]; then
  # After step 3 the state lives on the destination only: take it back first.
  if [ ! -s "$S" ]; then
    scp -q -o BatchMode=yes "$host:$D/$name.state" "$S" || { echo "Error: cannot take the state back from $host"; exit 1; }
  fi
  remote "rm -f $D/$name.state.incoming $D/$name.state" || { echo "Error: cannot clean up on $host"; exit 1; }
  echo "recovered: the state is here, nothing of it on $host"
  exit 0
fi
for f in "$D/slow-step-$step-"*; do [ -e "$f" ] && sleep "${f##*-}"; done
case $step in
  0) [ -s "$S" ] || { echo "Error: no device state $S"; exit 1; } ;;
  1 | 2)
    remote "$(refuse_check "$step"); cat >$D/$name.state.incoming" <"$S" || failed $? "copy to $host failed"
    ;;
  3)
    sum=$(md5sum <"$S" | cut -d' ' -f1)
    remote "$(refuse_check 3); [ \"\$(md5sum <$D/$name.state.incoming | cut -d' ' -f1)\" = $sum ] && mv $D/$name.state.incoming $D/$name.state" ||
      failed $? "state on $host does not match"
    rm -f "$S"
    ;;
  *) echo "Error: unknown step $step"; exit 1 ;;
esac
echo "step $step ok"
