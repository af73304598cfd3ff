"""A real one-node SLURM cluster for the tests of this folder (issue 10 §3).

The session fixture installs ``slurm-wlm munge slurmdbd mariadb-server`` from apt when they are absent
(root only), starts ``.ci/slurm_local.sh up`` with accounting (without ``sacct`` a cancelled job
never returns from submitit) in a folder and on ports of its own, and always runs ``down``. Where
that cannot happen (not root, no apt, a failed install) the tests are skipped with the reason;
``EZSD_REQUIRE_CLUSTER=1`` (set by ``.ci/run``) turns that skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci/slurm_local.sh"
PACKAGES = ("slurm-wlm", "munge", "slurmdbd", "mariadb-server")
BINARIES = ("slurmctld", "slurmd", "munged", "mungekey", "sbatch", "sacct", "slurmdbd", "mariadbd",
            "mariadb-install-db")
_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def _missing() -> list[str]:
    return [b for b in BINARIES if shutil.which(b, path=_PATH) is None]


def _install() -> str | None:
    """Install the cluster's packages when absent; the reason it cannot, or None."""
    if not _missing():
        return None
    if os.geteuid() != 0:
        return f"not root, and {', '.join(_missing())} are not installed (apt-get install {' '.join(PACKAGES)})"
    if shutil.which("apt-get") is None:
        return "no apt-get to install " + " ".join(PACKAGES)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": _PATH}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    for attempt in range(2):
        if attempt:  # the package lists may be missing or stale
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode == 0 and not _missing():
            return None
    return f"apt-get install {' '.join(PACKAGES)} failed: {(done.stderr or done.stdout).strip()[-300:]}"


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("EZSD_REQUIRE_CLUSTER") == "1":
        pytest.fail(f"the SLURM cluster is required here (EZSD_REQUIRE_CLUSTER=1) but: {reason}")
    pytest.skip(f"no SLURM cluster: {reason}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> str:
    """A running one-node SLURM cluster with accounting; yields its ``SLURM_CONF`` (also exported)."""
    t0 = time.perf_counter()
    reason = _install()
    if reason:
        _skip_or_fail(reason)
    folder = Path(f"/tmp/ezsd-slurm-{os.getpid()}")  # short: the munge socket path has a length limit
    base = 21000 + (os.getpid() % 2000) * 4
    env = {**os.environ, "PATH": _PATH, "SLURM_LOCAL_DIR": str(folder), "SLURM_LOCAL_ACCOUNTING": "1",
           "SLURM_LOCAL_CTLD_PORT": str(base), "SLURM_LOCAL_SLURMD_PORT": str(base + 1),
           "SLURM_LOCAL_DBD_PORT": str(base + 2), "SLURM_LOCAL_DB_PORT": str(base + 3)}
    old = {k: os.environ.get(k) for k in ("SLURM_CONF", "PATH")}
    try:
        up = subprocess.run(["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=180)
        if up.returncode != 0:
            _skip_or_fail(f".ci/slurm_local.sh up failed: {up.stderr.strip()[-400:]}")
        conf = up.stdout.strip().split("SLURM_CONF=", 1)[1]
        os.environ.update(SLURM_CONF=conf, PATH=_PATH)  # sbatch/sacct that submitit runs find the cluster
        print(f"\nslurm cluster up in {time.perf_counter() - t0:.1f} s (install included): {conf}")
        yield conf
    finally:
        subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, timeout=180)
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
