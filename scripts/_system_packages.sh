#!/usr/bin/env bash
# System packages gen2d's tests need: CP2K (the dgh.dft scorer and the cp2k calculator). Installed with
# apt-get where it is missing and this is Debian/Ubuntu run as root; elsewhere it prints how to get it
# and the CP2K tests skip. Idempotent: nothing is done when cp2k_shell and its data files are present.
set -uo pipefail
if command -v cp2k_shell >/dev/null 2>&1 && [ -f /usr/share/cp2k/GTH_POTENTIALS -o -n "${CP2K_DATA_DIR:-}" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing CP2K (apt-get install cp2k cp2k-data) ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  if (apt-get install -y -qq cp2k cp2k-data >/dev/null 2>&1 || \
      (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq cp2k cp2k-data >/dev/null 2>&1)); then
    exit 0
  fi
  echo "apt-get could not install cp2k; the CP2K tests will skip" >&2
else
  echo "CP2K is not installed: get it with 'apt-get install cp2k cp2k-data' (Debian/Ubuntu, as root)," \
       "'conda install -c conda-forge cp2k', or 'module load cp2k' on a cluster; the CP2K tests will skip" >&2
fi
exit 0
