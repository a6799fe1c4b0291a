#!/usr/bin/env bash
# System packages: libraries for offscreen MuJoCo rendering on a CPU (Mesa EGL, and
# OSMesa as the fallback), iproute2 for the multi-host test's network namespaces, and
# Slurm with munge for the Slurm test's one-host cluster (tests/slurm_cluster.py).
# Installs only what is missing; needs root (or sudo) to install.
set -euo pipefail
PACKAGES=(libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri libosmesa6 libglib2.0-0 iproute2
          slurmctld slurmd slurm-client munge)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "warning: no apt-get; install these yourself: ${missing[*]}" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "warning: not root; run: apt-get install ${missing[*]}" >&2
    exit 0
  fi
fi
echo "installing system packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
