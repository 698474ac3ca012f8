"""A private one-node SLURM cluster for the integration test (run as root).

`start(workdir)` installs slurm-wlm and munge from Debian where they are missing, starts munged,
slurmctld and slurmd in the foreground as children of this process, with a generated one-node
config and every file (munge key and socket, state, spool, logs) under `workdir`, and waits until
the node is idle. `stop(cluster)` stops exactly those daemons, by pid. Nothing under /etc is written
(the Debian packages write their own defaults there when installed).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from a2d.launch import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("srun", "sbatch", "squeue", "scancel", "sinfo", "scontrol", "sacct")


def install() -> None:
    if all(shutil.which(name, path="/usr/sbin:/usr/bin") for name in DAEMONS + CLIENTS):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=900)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"], check=True,
                   env=env, timeout=900, stdout=subprocess.DEVNULL)


def memory_mb() -> int:
    with open("/proc/meminfo") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return int(kb / 1024 * 0.9)  # below the real size, or slurmd drains the node


def wait_for(ready, what: str, daemons, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for daemon in daemons:
            if daemon.poll() is not None:
                raise RuntimeError(f"{what}: {daemon.args[0]} exited with status {daemon.returncode}")
        if ready():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def start(workdir: Path, partition: str = "a2d") -> dict:
    install()
    wd = Path(workdir).resolve()
    for sub in ("munge", "state", "spool", "log", "bin"):
        (wd / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(wd / "munge", 0o700)  # munged refuses directories others can write
    key, munge_socket = wd / "munge" / "munge.key", wd / "munge" / "munge.socket"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    host = socket.gethostname().split(".")[0]
    conf = wd / "slurm.conf"
    conf.write_text(f"""\
ClusterName=a2dtest
SlurmctldHost={host}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
MinJobAge=7200
StateSaveLocation={wd}/state
SlurmdSpoolDir={wd}/spool/%n
SlurmctldPidFile={wd}/slurmctld.pid
SlurmdPidFile={wd}/slurmd.pid
SlurmctldLogFile={wd}/log/slurmctld.log
SlurmdLogFile={wd}/log/slurmd.log
NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb()} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    # Snakemake's job step drops SLURM_CONF from the environment before its inner srun; these
    # wrappers (first on PATH, which it keeps) bring it back without writing /etc/slurm/slurm.conf.
    for tool in CLIENTS:
        wrapper = wd / "bin" / tool
        real = shutil.which(tool, path="/usr/bin:/usr/sbin")
        wrapper.write_text(f'#!/bin/sh\nexport SLURM_CONF={conf}\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{wd / 'bin'}:{os.environ['PATH']}"}
    cluster = {"workdir": wd, "env": env, "partition": partition, "daemons": []}

    def spawn(name: str, argv: list[str]) -> subprocess.Popen:
        with open(wd / "log" / f"{name}.out", "ab") as out:
            daemon = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                      start_new_session=True)
        cluster["daemons"].append(daemon)
        return daemon

    try:
        munged = spawn("munged", ["/usr/sbin/munged", "--foreground", "--force", f"--key-file={key}",
                                  f"--socket={munge_socket}", f"--pid-file={wd}/munge/munged.pid",
                                  f"--log-file={wd}/log/munged.log", f"--seed-file={wd}/munge/munged.seed"])
        wait_for(munge_socket.exists, "the munge socket", [munged])
        daemons = [munged, spawn("slurmctld", ["/usr/sbin/slurmctld", "-D", "-i", "-f", str(conf)]),
                   spawn("slurmd", ["/usr/sbin/slurmd", "-D", "-N", host, "-f", str(conf)])]

        def node_idle() -> bool:
            state = subprocess.run(["sinfo", "--noheader", "--Node", "--format", "%T"], env=env, capture_output=True,
                                   text=True)
            return state.returncode == 0 and state.stdout.strip() == "idle"

        wait_for(node_idle, "the node to be idle", daemons)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def stop(cluster: dict, timeout: float = 30) -> None:
    """Stop the daemons `start` started, newest first."""
    for daemon in reversed(cluster["daemons"]):
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
