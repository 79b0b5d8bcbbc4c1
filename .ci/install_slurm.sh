#!/usr/bin/env bash
# Install a single-node SLURM (Debian 12: slurm-wlm 22.05) + munge, as used by
# tests/slurm/cluster.sh and tests/test_slurm.py.
#
# Idempotent: does nothing when everything is already installed.
# Non-interactive and quiet; needs root (or sudo) and access to the Debian
# package mirrors.  Daemons are NOT enabled/started here: the test starts and
# stops them itself (no systemd needed, works in containers).
set -euo pipefail

PKGS=(slurm-wlm slurm-client munge)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install_slurm: already installed: ${PKGS[*]}"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    echo "install_slurm: installing ${missing[*]}"
    $SUDO apt-get update -qq
    # (--force-confold: keep existing config files; the test cluster writes
    # its own configuration and starts the daemons itself)
    $SUDO apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null
fi

for bin in slurmctld slurmd munged sbatch squeue sinfo scontrol; do
    command -v "$bin" >/dev/null || { echo "install_slurm: $bin missing after install" >&2; exit 1; }
done
echo "install_slurm: $(slurmctld -V)"
