"""What the benchmark scripts share: the environment for the programs they
start, CPU pinning with taskset, and killing a started process's group."""
import os
import shutil
import signal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env():
    """This environment with the checkout first on PYTHONPATH and no
    interpose preload inherited (each variant asks for its own)."""
    result = dict(os.environ)
    path = result.get("PYTHONPATH")
    result["PYTHONPATH"] = ROOT + (os.pathsep + path if path else "")
    for name in ("LD_PRELOAD", "INTERPOSE_AUTOSTART", "INTERPOSE_MAIN_HOOKS"):
        result.pop(name, None)
    return result


def cpus():
    """(server cpus, load cpus) for taskset: the first CPU for the server,
    the others for the load; (None, None) without taskset or a second CPU."""
    if shutil.which("taskset") is None:
        return None, None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return available[:1], available[1:]


def pinned(argv, cpus):
    """argv run under taskset on cpus (argv itself when cpus is None)."""
    if cpus is None:
        return argv
    return ["taskset", "-c", ",".join(map(str, cpus)), *argv]


def kill_group(proc):
    """SIGKILL the process group of a child started with
    start_new_session=True, and reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
