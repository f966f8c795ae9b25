"""One Ray cluster per local Snakemake run, shared by all its Ray jobs (pretrain, embed, curate with Ray workers).

Why: a Ray job that starts and stops a private Ray pays ~7-10 s for it on 2 busy cores, and several private Rays
on one machine collide (ray#45836, ray#53906), so they had to take turns machine-wide. One cluster per run, sized
to what Snakemake was given, lets every job *attach* (~0.1-1 s) and lets Ray jobs run side by side: Snakemake's
resources (``threads``, ``gpu``) stay the gate and each job asks the cluster for exactly its share.

Mechanism (``Snakefile``: ``onstart`` / ``onsuccess`` / ``onerror``, local executor only):

* ``onstart`` calls :func:`start_cluster`, which spawns a small detached **supervisor** process
  (``python -m workflow.raycluster serve``) and exports ``STRATA_RAY_CLUSTER=<cluster dir>`` to the jobs. The
  supervisor runs ``ray start --head --block`` sized to ``--cores`` (and ``--resources gpu=N``, else the GPUs Ray
  detects) while the first, non-Ray jobs already run, then writes ``cluster.json`` (the GCS address) into the
  cluster dir. Jobs wait for that file and ``ray.init(address=…)`` (:func:`workflow.distributed.ray_session`).
* The cluster dir is keyed by the study's results folder (``/tmp/strata-ray-<uid>-<hash>``, short enough for
  Ray's AF_UNIX sockets): it is Ray's temp dir, and every port (GCS, dashboard, agents, metrics, node and object
  managers, workers) is chosen free, so two studies on one machine never share sockets, session files or ports.
* The cluster ends with the run: ``onsuccess`` / ``onerror`` call :func:`stop_cluster`; the supervisor also polls
  the Snakemake process and stops the cluster as soon as it is gone (Ctrl-C, ``kill -9``). ``ray start`` runs in
  its own process group with ``PR_SET_PDEATHSIG``, so even a killed supervisor takes the daemons with it, and
  whatever is left in that group is SIGKILLed. A cluster dir left by a killed run is reaped by the next start.
* A job's driver that dies (SIGKILL, SIGTERM) takes its work with it: its actors and tasks are not detached,
  so the cluster's GCS kills them when the driver's connection drops (tests/test_raycluster.py).

``RAY_ADDRESS`` / the config's ``ray.address`` win over all of this (an external cluster); under a cluster
executor (SLURM) there is no run-wide cluster and each job starts its own Ray in its allocation.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from workflow.errors import StrataError

CLUSTER_ENV = "STRATA_RAY_CLUSTER"
STATE = "cluster.json"
SUPERVISOR_LOG = "supervisor.log"
POLL_S = 0.2
WAIT_NOTICE_S = 2.0  # a job that has waited this long for the cluster says so in its log


def cluster_dir(results: str | os.PathLike[str]) -> Path:
    """The run-wide cluster's dir for a study, keyed by its absolute results folder (short: AF_UNIX paths)."""
    key = hashlib.sha1(str(Path(results).resolve()).encode()).hexdigest()[:10]
    base = os.environ.get("RAY_TMPDIR") or "/tmp"
    if len(base) > 40:  # Ray's socket paths below it must stay under 107 bytes (ray#7724)
        base = "/tmp"
    return Path(base) / f"strata-ray-{os.getuid()}-{key}"


# ------------------------------------------------------------------------------------------------ processes


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a live process from a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int | None, start: int | None = None) -> bool:
    """Whether ``pid`` runs (and, given ``start``, is still the process that started then), zombies excluded."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return stat[0] != "Z" and (start is None or int(stat[19]) == start)


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[2]) == pgid and stat[0] != "Z":
                    members.append(int(entry.name))
    return members


def kill_group(pgid: int | None) -> int:
    """SIGKILL what is left of a Ray process group; returns how many processes it held."""
    if not pgid:
        return 0
    members = group_members(pgid)
    if members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    return len(members)


def cluster_processes(cdir: Path) -> list[int]:
    """This user's processes of the cluster in ``cdir``: Ray's daemons (their command line names the dir) and
    its workers (they inherit ``RAY_AUTH_TOKEN_PATH=<cdir>/auth_token``); not the supervisor, not us."""
    mark, env_mark = f"{cdir}/".encode(), f"RAY_AUTH_TOKEN_PATH={cdir}/auth_token".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid != os.getuid():
                continue
            cmdline = (entry / "cmdline").read_bytes()
            if b"workflow.raycluster" in cmdline:
                continue
            if mark in cmdline or env_mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return [pid for pid in found if alive(pid)]


def kill_cluster_processes(cdir: Path) -> int:
    """SIGKILL whatever is left of the cluster in ``cdir``; returns how many processes that was."""
    pids = cluster_processes(cdir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if stat[0] != "Z":
                    children.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def guard(owner: int, owner_start: int | None, poll: float = 0.5) -> int:
    """Watch a job that started a private Ray; when it dies, SIGKILL what is left of the processes it started.

    Ray ties its daemons to the driver (parent-death signal), but not the agents its raylet starts
    (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``), which outlive a SIGKILLed driver. The guard notes the
    driver's descendants while it lives and kills the survivors afterwards (start times guard against reused pids).
    """
    known: dict[int, int | None] = {}
    while alive(owner, owner_start):
        for pid in descendants(owner):
            if pid != os.getpid():
                known.setdefault(pid, _start_time(pid))
        time.sleep(poll)
    time.sleep(1.0)  # Ray's own teardown first
    killed = 0
    for pid, start in known.items():
        if alive(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


def start_guard() -> subprocess.Popen:
    """Start a :func:`guard` for this process (a job with a private Ray); terminate it after ``ray.shutdown()``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen([sys.executable, "-m", "workflow.raycluster", "guard", str(os.getpid()),
                             str(_start_time(os.getpid()) or 0)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
                            close_fds=True)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ------------------------------------------------------------------------------------------------ state


def read_state(cdir: Path) -> dict[str, Any]:
    try:
        return json.loads((cdir / STATE).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(cdir: Path, state: dict[str, Any]) -> None:
    tmp = cdir / f"{STATE}.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, cdir / STATE)


def reap(cdir: Path) -> int:
    """Clean up a cluster dir whose supervisor is gone (a killed run): kill its Ray group, drop its state."""
    state = read_state(cdir)
    if not state or alive(state.get("supervisor_pid"), state.get("supervisor_start")):
        return 0
    killed = kill_group(state.get("ray_pgid")) + kill_cluster_processes(cdir)
    with contextlib.suppress(OSError):
        (cdir / STATE).unlink()
    return killed


# ------------------------------------------------------------------------------------------------ Snakemake side


def start_cluster(results: str | os.PathLike[str], num_cpus: int, num_gpus: int | None = None,
                  owner: int | None = None) -> Path:
    """Start the run-wide cluster's supervisor (returns at once) and export its dir to the jobs.

    Reuses the cluster of a live supervisor of the same study whose run is still going (``--nolock`` runs);
    otherwise reaps what a killed run left and starts a fresh supervisor owned by ``owner`` (default: us).
    """
    cdir = cluster_dir(results)
    cdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    owner = owner or os.getpid()
    state = read_state(cdir)
    supervisor = state.get("supervisor_pid"), state.get("supervisor_start")
    if alive(*supervisor) and alive(state.get("owner_pid"), state.get("owner_start")):
        print(f"strata: reusing the Ray cluster of run {state['owner_pid']} ({cdir})", file=sys.stderr)
    else:
        if alive(*supervisor):  # its run is gone and it is stopping: wait, so no job sees its old address
            deadline = time.monotonic() + 30
            while alive(*supervisor) and time.monotonic() < deadline:
                time.sleep(0.1)
        if reap(cdir):
            print(f"strata: cleaned up the Ray cluster a killed run left in {cdir}", file=sys.stderr)
        with contextlib.suppress(OSError):
            (cdir / STATE).unlink()
        cmd = [sys.executable, "-m", "workflow.raycluster", "serve", str(cdir), "--owner", str(owner),
               "--owner-start", str(_start_time(owner) or 0), "--num-cpus", str(num_cpus)]
        if num_gpus is not None:
            cmd += ["--num-gpus", str(num_gpus)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")) if p)}
        with open(cdir / SUPERVISOR_LOG, "w") as log:
            subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True, close_fds=True)
    os.environ[CLUSTER_ENV] = str(cdir)
    return cdir


def stop_cluster(cdir: str | os.PathLike[str] | None = None, timeout: float = 30.0) -> None:
    """Stop the run-wide cluster (``onsuccess`` / ``onerror``): ask the supervisor, wait, then reap leftovers."""
    cdir = Path(cdir or os.environ.get(CLUSTER_ENV) or "")
    if not str(cdir) or not cdir.is_dir():
        return
    state = read_state(cdir)
    pid, start = state.get("supervisor_pid"), state.get("supervisor_start")
    if alive(pid, start) and state.get("owner_pid") == os.getpid():
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid, start) and time.monotonic() < deadline:
            time.sleep(0.1)
    if not alive(pid, start):
        reap(cdir)


def wait_for_cluster(cdir: str | os.PathLike[str], timeout: float = 600.0) -> str:
    """The run-wide cluster's address, once it is up (a job waits for it; fails if the supervisor is gone).

    Also points this process's Ray at the cluster's auth token (``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN_PATH``).
    """
    cdir = Path(cdir)
    start = time.monotonic()
    seen_supervisor, told = False, False
    while True:
        state = read_state(cdir)
        if state.get("address"):
            if state.get("auth_token_path"):
                os.environ.pop("RAY_AUTH_TOKEN", None)
                os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=state["auth_token_path"])
                if "ray" in sys.modules:  # Ray read its config at import: make it see the token (as Ray itself does)
                    from ray._raylet import AuthenticationTokenLoader, Config

                    Config.initialize("")
                    AuthenticationTokenLoader.instance().reset_cache()
            return state["address"]
        running = alive(state.get("supervisor_pid"), state.get("supervisor_start"))
        seen_supervisor |= running
        waited = time.monotonic() - start
        if state.get("error") or (seen_supervisor and not running) or waited > timeout or (not state and waited > 60):
            log = cdir / SUPERVISOR_LOG
            tail = log.read_text(errors="replace")[-1500:] if log.is_file() else "(no log)"
            raise StrataError(f"the run's Ray cluster did not come up: {state.get('error') or 'no address'}; "
                              f"supervisor log {log}:\n{tail}", where=str(cdir),
                              fix=f"re-run Snakemake (it starts a new cluster), or unset {CLUSTER_ENV}.")
        if waited > WAIT_NOTICE_S and not told:  # the run's first Ray jobs wait for `ray start`: say so
            print(f"ray: waiting for the run's Ray cluster to come up ({cdir}) ...", file=sys.stderr, flush=True)
            told = True
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------------ supervisor


def _pdeathsig() -> None:
    """In the child: get SIGTERM when the supervisor dies (``ray start --block`` then stops its daemons)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _ray_start(cdir: Path, num_cpus: int, num_gpus: int | None, log_path: Path) -> tuple[subprocess.Popen, str]:
    """``ray start --head --block`` with free ports in ``cdir``; returns the process and the GCS address."""
    from workflow.distributed import RAY_ENV_DEFAULTS

    gcs, dash, agent_http, agent_grpc, runtime_env, metrics, node_mgr, obj_mgr = _free_ports(8)
    ray_exe = str(Path(sys.executable).with_name("ray"))
    cmd = [ray_exe, "start", "--head", "--block", f"--port={gcs}",
           f"--num-cpus={num_cpus}", f"--temp-dir={cdir}", "--disable-usage-stats", "--include-dashboard=false",
           f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
           f"--metrics-export-port={metrics}", f"--node-manager-port={node_mgr}",
           f"--object-manager-port={obj_mgr}",
           "--min-worker-port=0", "--max-worker-port=0"]
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    env = dict(os.environ)
    for var, value in RAY_ENV_DEFAULTS.items():
        env.setdefault(var, value)
    # The cluster's own processes (Train controller, cleaner) look the cluster up with address "auto", which
    # fails when other Ray instances run on the machine (another study's): point them at this one.
    env["RAY_ADDRESS"] = f"127.0.0.1:{gcs}"
    env.pop("RAY_AUTH_TOKEN", None)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(cdir / "auth_token"))
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, preexec_fn=_pdeathsig)
    return proc, str(gcs)


def serve(cdir: Path, owner: int, owner_start: int | None, num_cpus: int, num_gpus: int | None) -> int:
    """The supervisor: start the cluster, publish its address, stop it when asked or when the run is gone."""
    import fcntl

    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    lock = open(cdir / "supervisor.lock", "a")  # held for the supervisor's life
    fcntl.flock(lock, fcntl.LOCK_EX)
    reap(cdir)
    if kill_cluster_processes(cdir):  # a killed run's cluster, whose state file is gone
        print("killed the leftovers of an earlier cluster in this dir", flush=True)
    for old in cdir.glob("session_*"):
        subprocess.run(["rm", "-rf", str(old)], check=False)
    owner_start = owner_start or None
    me = {"supervisor_pid": os.getpid(), "supervisor_start": _start_time(os.getpid()), "owner_pid": owner,
          "owner_start": owner_start, "num_cpus": num_cpus, "num_gpus": num_gpus, "auth_token_path": None}
    # Ray 2.60 turns token authentication on when ~/.ray/auth_token exists; give the cluster a token of its
    # own (readable by this user only) and hand its path to the jobs, so that it never depends on that file.
    token = cdir / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    me["auth_token_path"] = str(token)
    proc, address = None, None
    t0 = time.monotonic()
    for attempt in range(3):  # a port taken between choosing it and Ray binding it: try other ports
        log_path = cdir / "ray-start.log"
        log_path.write_text("")
        with contextlib.suppress(OSError):
            (cdir / "ray_current_cluster").unlink()
        proc, address = _ray_start(cdir, num_cpus, num_gpus, log_path)
        _write_state(cdir, {**me, "ray_pgid": proc.pid, "address": None})
        while proc.poll() is None and not stop and alive(owner, owner_start):
            if (cdir / "ray_current_cluster").is_file():  # `ray start` writes it once the head is up
                break
            time.sleep(POLL_S / 2)
        if proc.poll() is None:
            break
        kill_group(proc.pid)
        print(f"ray start failed (attempt {attempt + 1}):\n{log_path.read_text(errors='replace')[-3000:]}",
              flush=True)
    if proc is None or proc.poll() is not None:
        _write_state(cdir, {**me, "ray_pgid": None, "address": None, "error": "ray start failed, see ray-start.log"})
        return 1
    if not stop and alive(owner, owner_start):
        # The GCS address as Ray wrote it (the node's IP, which is what a driver's ray.init resolves to).
        for _ in range(50):
            with contextlib.suppress(OSError):
                address = (cdir / "ray_current_cluster").read_text().strip() or address
            if ":" in str(address):
                break
            time.sleep(0.05)
        _write_state(cdir, {**me, "ray_pgid": proc.pid, "address": address})
        print(f"cluster {address} up in {time.monotonic() - t0:.1f}s (CPU {num_cpus}, GPU {num_gpus})", flush=True)
    while not stop and proc.poll() is None and alive(owner, owner_start):
        time.sleep(POLL_S)
    why = "asked to stop" if stop else ("ray start exited" if proc.poll() is not None else "the run is gone")
    t1 = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its daemons gracefully
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)  # then SIGKILL: the cluster keeps nothing worth a slow goodbye
    leftovers = kill_group(proc.pid) + kill_cluster_processes(cdir)  # Ray's workers have process groups of their own
    with contextlib.suppress(OSError):
        (cdir / STATE).unlink()
    for old in cdir.glob("session_*"):
        subprocess.run(["rm", "-rf", str(old)], check=False)
    print(f"cluster stopped ({why}) in {time.monotonic() - t1:.1f}s, {leftovers} leftover process(es) killed",
          flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m workflow.raycluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the supervisor of a cluster dir (started by start_cluster)")
    p.add_argument("dir", type=Path)
    p.add_argument("--owner", type=int, required=True, help="the Snakemake process the cluster belongs to")
    p.add_argument("--owner-start", type=int, default=0)
    p.add_argument("--num-cpus", type=int, required=True)
    p.add_argument("--num-gpus", type=int, default=None)
    p = sub.add_parser("stop", help="stop a cluster dir's cluster (or reap what a killed run left)")
    p.add_argument("dir", type=Path)
    p = sub.add_parser("guard", help="kill what is left of a job's private Ray once the job is gone")
    p.add_argument("pid", type=int)
    p.add_argument("start", type=int)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.dir, args.owner, args.owner_start, args.num_cpus, args.num_gpus)
    if args.command == "guard":
        guard(args.pid, args.start or None)
        return 0
    state = read_state(args.dir)
    if alive(state.get("supervisor_pid"), state.get("supervisor_start")):
        os.kill(state["supervisor_pid"], signal.SIGTERM)
    else:
        reap(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
