"""Child processes for tests that run whole programs: each in a session of
its own, so that killing its group at the end of the test also kills
whatever it forked, even when the test failed."""
import os
import signal
import subprocess
import sys


def interpose_run(*argv):
    """The argv of `python -m interpose run ARGV...` (items made str)."""
    return [sys.executable, "-m", "interpose", "run", *map(str, argv)]


class ProcessGroup:
    """Starts children (stdout a text pipe) and kills them all as groups."""

    def __init__(self, *, env, cwd):
        self.env = env
        self.cwd = cwd
        self.procs = []

    def start(self, argv, *, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
              env=None):
        proc = subprocess.Popen(
            argv, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr,
            text=True, env=env or self.env, start_new_session=True,
            cwd=self.cwd,
        )
        self.procs.append(proc)
        return proc

    def kill_all(self):
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its pid is its group
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    f.close()
