"""The machine and software a result was computed on, recorded beside the numbers.

Training on a CPU is reproducible on one machine, not across machines: the same code,
configuration and seeds gave held-out TEM scores that differ by about one training seed's
spread on two machines (issue 5, sessions 11 and 12). So every metrics file says where it was
measured (``describe``), and results can be compared knowing whether the machine changed.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# The packages whose versions change the numbers of one stage or another.
PACKAGES = (
    "nanoxtal",
    "torch",
    "pytorch-lightning",
    "numpy",
    "scipy",
    "pandas",
    "scikit-image",
    "scikit-learn",
    "pymatgen",
)


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass  # not Linux: the platform module's answer is the best there is
    return platform.processor() or "unknown"


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None when it is not installed)."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def source_commit(folder: Path | None = None) -> str | None:
    """The git commit of the source tree holding ``folder`` (default: this package).

    Args:
        folder: A folder inside a git checkout.

    Returns:
        The commit hash, with ``+dirty`` when tracked files have uncommitted changes; None
        without git, outside a git checkout, or when git tracks nothing in ``folder`` (a
        package installed into a virtualenv that lies inside some other repository).
    """
    folder = folder or Path(__file__).resolve().parent
    git = ["git", "-C", str(folder)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        tracked = subprocess.run(
            [*git, "ls-files", "--error-unmatch", "."], capture_output=True, timeout=30
        )
        if commit.returncode != 0 or tracked.returncode != 0:
            return None
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    dirty = "+dirty" if status.returncode != 0 or status.stdout.strip() else ""
    return commit.stdout.strip() + dirty


def describe() -> dict[str, object]:
    """Where a result is computed: machine, CPU, GPU, threads, package versions, commit.

    Returns:
        A JSON-ready mapping: ``python``, ``platform``, ``cpu``, ``cpu_count``,
        ``torch_threads`` (intra-op threads torch uses), ``gpu`` (name of the first CUDA
        device, None without one), ``packages`` and ``nanoxtal_commit``.
    """
    import torch  # heavy: imported only when a result is written

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": package_versions(),
        "nanoxtal_commit": source_commit(),
    }
