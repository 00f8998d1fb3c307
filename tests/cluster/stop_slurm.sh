#!/usr/bin/env bash
# Stop the one-node test cluster started by tests/cluster/start_slurm.sh (slurmd, slurmctld,
# munged), each by the process id in its pid file. Queued and running jobs are cancelled first.
set -uo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

if command -v scancel >/dev/null && scontrol ping 2>/dev/null | grep -q "is UP"; then
    $SUDO scancel --full --user="$(id -un)" 2>/dev/null || true
fi
for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
    if [ -s "$pidfile" ] && $SUDO kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        pid=$(cat "$pidfile")
        echo "stop_slurm: stopping $(basename "$pidfile" .pid) ($pid)" >&2
        $SUDO kill "$pid"
        for _ in $(seq 50); do
            $SUDO kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
    fi
done
