"""Where CP2K and its data files are: the executable on PATH or from the config, the data directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: Directories searched for BASIS_MOLOPT, GTH_POTENTIALS and dftd3.dat, in order: Debian's cp2k-data,
#: conda-forge's share folder, a source build's data folder.
DATA_DIRS = ("/usr/share/cp2k", "{prefix}/share/cp2k/data", "{prefix}/share/cp2k")
SHELL_NAMES = ("cp2k_shell", "cp2k_shell.psmp", "cp2k_shell.ssmp", "cp2k.psmp", "cp2k.ssmp", "cp2k")


class Cp2kUnavailable(RuntimeError):
    """CP2K cannot run here; the message says what is missing and how to install it."""


INSTALL_HINT = (
    "install CP2K: `apt-get install cp2k cp2k-data` (Debian/Ubuntu), "
    "`conda install -c conda-forge cp2k`, or `module load cp2k` on a cluster; "
    "or set GEN2D_CP2K_COMMAND to the full `cp2k_shell` command"
)


def find_shell_command(command: str | None = None) -> str:
    """The command that starts CP2K in shell mode (``-s``), e.g. ``cp2k_shell`` or ``cp2k.psmp -s``.

    Order: the explicit ``command``; ``GEN2D_CP2K_COMMAND``; the first of :data:`SHELL_NAMES` on PATH.
    Raises :class:`Cp2kUnavailable` naming what was searched.
    """
    from gen2d.settings import get_settings

    explicit = command or get_settings().cp2k_command
    if explicit:
        exe = explicit.split()[0]
        if shutil.which(exe) is None:
            raise Cp2kUnavailable(f"CP2K command {explicit!r}: {exe!r} is not an executable on PATH; {INSTALL_HINT}")
        return explicit
    for name in SHELL_NAMES:
        path = shutil.which(name)
        if path:
            return path if name.startswith("cp2k_shell") else f"{path} -s"
    raise Cp2kUnavailable(f"no CP2K executable ({', '.join(SHELL_NAMES)}) on PATH; {INSTALL_HINT}")


def data_dir(explicit: str | None = None) -> Path:
    """The CP2K data directory holding BASIS_MOLOPT, GTH_POTENTIALS and dftd3.dat."""
    from gen2d.settings import get_settings

    configured = get_settings().cp2k_data_dir
    candidates = [explicit, str(configured) if configured else None, os.environ.get("CP2K_DATA_DIR")]
    prefix = os.environ.get("CONDA_PREFIX", "/usr")
    candidates += [d.format(prefix=prefix) for d in DATA_DIRS]
    for cand in candidates:
        if cand and (Path(cand) / "GTH_POTENTIALS").is_file():
            return Path(cand)
    raise Cp2kUnavailable(
        f"CP2K data files (GTH_POTENTIALS, BASIS_MOLOPT) not found; set CP2K_DATA_DIR or {INSTALL_HINT}"
    )


def data_file(name: str, explicit_dir: str | None = None) -> Path:
    return data_dir(explicit_dir) / name


def cp2k_version(command: str | None = None) -> str:
    """CP2K's version line (e.g. ``CP2K version 2023.1``), read once from ``cp2k --version``."""
    import subprocess

    exe = find_shell_command(command).split()[0]
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Cp2kUnavailable(f"{exe} --version failed: {exc}") from exc
    for line in out.splitlines():
        if "CP2K version" in line:
            return line.strip()
    return out.strip().splitlines()[0] if out.strip() else "unknown"
