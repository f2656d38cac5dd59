#!/bin/sh
# consoles.sh mark|new: remembers the size of every guest console log of this host (mark), or
# prints what was appended to each since the mark (new): one migration's console lines.
MARK=/run/deploy-console.mark
case $1 in
  mark)
    : >"$MARK"
    for f in /var/log/xen/console/guest-*.log; do
      [ -f "$f" ] && echo "$f $(stat -c %s "$f")" >>"$MARK"
    done
    ;;
  new)
    for f in /var/log/xen/console/guest-*.log; do
      [ -f "$f" ] || continue
      off=$(awk -v f="$f" '$1 == f { print $2 }' "$MARK" 2>/dev/null)
      tail -c +$((${off:-0} + 1)) "$f"
    done
    ;;
  *) echo "usage: consoles.sh mark|new" >&2; exit 64 ;;
esac
