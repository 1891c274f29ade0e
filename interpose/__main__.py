"""The command line: python -m interpose (run | env | info | demo | ps)."""
import argparse
import os
import shlex
import subprocess
import sys

from ._core import _settings
from ._core._unloadable import print_interpreter, print_unusable

USAGE_RUN = """usage: interpose run [--stack-size N] [--no-main-hooks] [--stats]
                     [--native-threads] [--monitor SECONDS]
                     [--deadlock MODE] [--dump-signal SIG]
                     (script.py | -m module | -c code) [args ...]

Runs a Python program with libinterpose.so preloaded: its main code is the
main coroutine, every thread it starts is a coroutine on the thread that
started it, and blocking calls park coroutines instead of the thread.
sys.argv, __main__, sys.path[0], the exit status and tracebacks are what
plain python gives.

options:
  --stack-size N       default C stack per coroutine (bytes, or with K/M)
  --no-main-hooks      leave the main coroutine's calls blocking
  --stats              print the scheduler's statistics to stderr at exit
  --native-threads     keep threads as OS threads, each with its own scheduler
  --monitor SECONDS    report, with its stack, a coroutine that runs longer
                       than SECONDS without reaching a hooked call
  --deadlock MODE      report (default): print a deadlock report and keep
                       waiting; exit: print it and exit with status 70; off
  --dump-signal SIG    dump every coroutine to stderr on SIG (e.g. SIGQUIT)
                       (docs/diagnostics.md)
"""


def _fail(message, status=2):
    sys.stderr.write(f"interpose: {message}\n")
    return status


def _load():
    """The runtime's boot module, or an error message for the user."""
    from ._core import _compat

    reason = _compat.unsupported_reason()
    if reason:
        return None, reason
    try:
        from . import _autostart
    except ImportError as e:
        return None, str(e).removeprefix("interpose: ")
    return _autostart, None


def _boot_environment(autostart, **opts):
    """(environment for a booting child, None) or (None, problem): every
    check that can be made before starting it."""
    problem = autostart.boot_problem()
    if problem:
        return None, problem
    env = autostart.environment(**opts)
    found = _settings.problems(env)
    if found:
        return None, "; ".join(found)
    return env, None


def _interpreter_options():
    """Options given to the interpreter before '-m interpose' (-X dev, -W,
    -u, ...), so the program runs under the same ones."""
    orig = getattr(sys, "orig_argv", [])
    for i, arg in enumerate(orig[1:], 1):
        if arg == "-m" and orig[i + 1:i + 2] == ["interpose"]:
            return orig[1:i]
    return []


def parse_run(argv):
    """(options, target argv) for `interpose run`; raises SystemExit."""
    opts = {"stack_size": None, "main_hooks": True, "stats": False,
            "native_threads": False, "monitor": None, "deadlock": None,
            "dump_signal": None}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(USAGE_RUN, end="")
            raise SystemExit(0)
        option = arg.split("=", 1)[0]
        if option in ("--stack-size", "--monitor", "--deadlock", "--dump-signal"):
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise SystemExit(_fail(f"{option} needs a value"))
            opts[option[2:].replace("-", "_")] = value
        elif arg == "--native-threads":
            opts["native_threads"] = True
        elif arg == "--no-main-hooks":
            opts["main_hooks"] = False
        elif arg == "--stats":
            opts["stats"] = True
        elif arg in ("-m", "-c"):
            if i + 1 >= len(argv):
                raise SystemExit(_fail(f"{arg} needs an argument\n{USAGE_RUN}"))
            return opts, argv[i:]
        elif arg.startswith("-") and arg != "-":
            raise SystemExit(_fail(f"unknown option {arg}\n{USAGE_RUN}"))
        else:
            return opts, argv[i:]
        i += 1
    raise SystemExit(_fail(f"nothing to run\n{USAGE_RUN}"))


def _run(argv):
    opts, target = parse_run(argv)
    # The options are checked under their own names; the environment
    # (INTERPOSE_* inherited from the shell) by _boot_environment.
    try:
        if opts["monitor"] is not None:
            _settings.monitor_seconds(opts["monitor"], "--monitor")
        if opts["stack_size"] is not None:
            _settings.stack_size(opts["stack_size"], "--stack-size")
        if opts["deadlock"] is not None:
            _settings.deadlock_mode(opts["deadlock"], "--deadlock")
        if opts["dump_signal"] is not None:
            _settings.signal_number(opts["dump_signal"], "--dump-signal")
    except _settings.SettingError as e:
        return _fail(str(e))
    autostart, problem = _load()
    if problem:
        return _fail(problem)
    env, problem = _boot_environment(autostart, **opts)
    if problem:
        return _fail(problem)
    # The child must boot or exit (_boot/sitecustomize.py); it drops this
    # marker, so its own children boot as under `interpose env`.
    env[_settings.BOOT_REQUIRED] = "1"
    exe = sys.executable
    os.execve(exe, [exe, *_interpreter_options(), *target], env)


def _env(args):
    autostart, problem = _load()
    if problem:
        return _fail(problem)
    # The shell's INTERPOSE_* settings reach every process started after
    # the lines: check them now, not in each of those processes.
    env, problem = _boot_environment(autostart)
    if problem:
        return _fail(problem)
    from ._core._native import LIBRARY_PATH

    if env["LD_PRELOAD"].split(":")[0] != LIBRARY_PATH:
        # A sanitizer runtime must stay first (scripts/asan-tests): give the
        # whole list, as computed from this shell's LD_PRELOAD.
        print(f"export LD_PRELOAD={shlex.quote(env['LD_PRELOAD'])}")
    else:
        print(f"export LD_PRELOAD={shlex.quote(LIBRARY_PATH)}"
              "${LD_PRELOAD:+:$LD_PRELOAD}")
    boot_dir = shlex.quote(autostart.BOOT_DIR)
    print(f"export PYTHONPATH={boot_dir}${{PYTHONPATH:+{os.pathsep}$PYTHONPATH}}")
    print("export INTERPOSE_AUTOSTART=1")
    return 0


# Run by `info` under the environment `run` gives a program: what booted.
_PROBE = """\
from interpose import _autostart
from interpose._core import _native
print("booted" if _autostart.booted() and _native.lib.preloaded() else "not booted")
"""


def _boot_probe(env):
    """None when a Python started with env boots the runtime, else why not
    (its own words)."""
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env,
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the probe process failed: {e}"
    if proc.returncode == 0 and proc.stdout.strip() == "booted":
        return None
    said = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return said.removeprefix("interpose: ")


def _info(args):
    print_interpreter()
    autostart, problem = _load()
    if problem:
        return print_unusable(problem)
    from ._core import _native, _statistics
    from ._version import __version__

    print(f"interpose: {__version__}")
    print(f"native library: {_native.LIBRARY_PATH}")
    print(f"build id: {_native.lib.build_id().decode()}")
    print(f"default stack: {_native.lib.stack_default()} bytes")
    print(f"boot hook: {autostart.BOOT_HOOK}")
    print(f"preloaded: {'yes' if _native.lib.preloaded() else 'no'}")
    running = autostart.booted() or _statistics.statistics() != _statistics.Statistics()
    print(f"scheduler running: {'yes' if running else 'no'}")
    env, problem = _boot_environment(autostart)
    if problem is None:
        problem = _boot_probe(env)
    if problem:
        print(f"boot under run/env: no: {problem}")
        return 1
    print("boot under run/env: yes (a Python started under the preload"
          " booted the runtime)")
    return 0


def _demo(args):
    """The echo demo (interpose/_demo_echo.py).  It needs the hooks, so it
    first re-executes itself under the preload, as `run` does; a marker in
    the environment stops a second re-execution."""
    autostart, problem = _load()
    if problem:
        return _fail(problem)
    if os.environ.get(_DEMO_MARKER) != "1":
        env, problem = _boot_environment(autostart)
        if problem:
            return _fail(problem)
        env[_DEMO_MARKER] = "1"
        env[_settings.BOOT_REQUIRED] = "1"
        argv = ["-m", "interpose", "demo", "--seconds", str(args.seconds),
                "--clients", str(args.clients)]
        os.execve(sys.executable,
                  [sys.executable, *_interpreter_options(), *argv], env)
    if not autostart.booted():
        return _fail("the demo re-executed itself under the preload, but the"
                     " runtime did not start (is INTERPOSE_AUTOSTART or"
                     " PYTHONPATH overridden?)", 1)
    from . import _demo_echo

    return _demo_echo.main(seconds=args.seconds, clients=args.clients)


_DEMO_MARKER = "INTERPOSE_DEMO_PRELOADED"


def _ps(args):
    """Print the coroutine dump (or statistics) of another process that runs
    under interpose, through its control socket (interpose/_diagnostics/_watch.py)."""
    from ._diagnostics import _watch

    try:
        pid = int(args.pid)
        if pid <= 0:
            raise ValueError
    except ValueError:
        return _fail(f"ps needs a process id, not {args.pid!r}")
    try:
        text = _watch.request(pid, b"stats" if args.stats else b"dump",
                              timeout=args.timeout)
    except TimeoutError:
        return _fail(f"process {pid} did not answer within {args.timeout} s"
                     " (is it stopped, or stuck in C code holding the GIL?)", 1)
    except OSError as e:
        return _fail(str(e), 1)
    sys.stdout.write(text)
    return 0 if text and not text.startswith("interpose: refused") else 1


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        return _run(argv[1:])
    parser = argparse.ArgumentParser(
        prog="interpose", description="Run blocking Python code on coroutines.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run a program on coroutines (see: interpose run -h)")
    env = sub.add_parser("env", help="print shell lines that preload interpose"
                                     " into every Python process started after them")
    env.set_defaults(func=_env)
    info = sub.add_parser("info", help="print the version, library and support")
    info.set_defaults(func=_info)
    demo = sub.add_parser("demo", help="echo server and clients on coroutines in"
                                       " one process, for a few seconds")
    demo.add_argument("--seconds", type=float, default=3,
                      help="how long the clients run (default 3)")
    demo.add_argument("--clients", type=int, default=100,
                      help="client coroutines, and as many server ones (default 100)")
    demo.set_defaults(func=_demo)
    ps = sub.add_parser("ps", help="print every coroutine (stack, wait reason) of"
                                   " a running interpose process")
    ps.add_argument("pid", help="the process id")
    ps.add_argument("--stats", action="store_true",
                    help="print its statistics instead of the dump")
    ps.add_argument("--timeout", type=float, default=10,
                    help="seconds to wait for the answer (default 10)")
    ps.set_defaults(func=_ps)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
