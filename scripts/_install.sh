#!/usr/bin/env bash
# Shared installer for quickstart.sh and test.sh: create or reuse .venv, install gen2d editable with
# the torch pin. Idempotent: a second run finds everything satisfied and returns quickly.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
extras=${GEN2D_EXTRAS:-test}
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
py=.venv/bin/python
stamp=.venv/.gen2d-install-stamp
# editable installs find top-level packages at install time: a new plugin package means reinstall
want=$( (cat pyproject.toml constraints.txt scripts/_install.sh; ls plugins) | sha256sum | cut -c1-16)-$extras
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
$py -m pip install -q --upgrade pip >/dev/null 2>&1 || true
$py -m pip install -q -c constraints.txt torch==2.13.0
$py -m pip install -q -c constraints.txt -e ".[$extras]"
case ",$extras," in
  *,mattersim,*)
    # --no-deps: mattersim's own requirements pull CUDA torchvision/torchaudio (broken beside the
    # CPU torch) and atomate2/wandb/azure, none of which its Potential needs.
    $py -m pip install -q -c constraints.txt --no-deps "mattersim==1.2.3" ;;
esac
echo "$want" > "$stamp"
