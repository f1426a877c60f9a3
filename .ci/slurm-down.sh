#!/usr/bin/env bash
# Stop the daemons .ci/slurm-up.sh started (and only those).
[ -f /tmp/lmid-slurm.started ] || exit 0
tac /tmp/lmid-slurm.started | while read -r name; do
  case $name in
    mariadbd) /etc/init.d/mariadb stop >/dev/null 2>&1 || true ;;
    *) pkill -x "$name" 2>/dev/null || true ;;
  esac
done
rm -f /tmp/lmid-slurm.started
