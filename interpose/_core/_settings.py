"""Every INTERPOSE_* environment setting: what it accepts, and one line that
says what is wrong with a bad value.

The settings live in the environment so that child processes inherit them
(`interpose run` sets them from its options; `interpose env` passes on the
shell's).  A bad value is never ignored: `interpose run` and `interpose env`
refuse to start with the line, a process booting under `interpose env`
prints the line and runs with the runtime off, and `import interpose`
raises SettingError for the settings the library itself reads
(INTERPOSE_STACK_SIZE, INTERPOSE_STACK_GUARD).  Names this module does not know are left alone:
they may belong to a newer or older interpose.

Imports nothing but the standard library, so the boot hook and the command
line can check settings before the native library is loaded.
"""
import math
import os
import re

from . import _compat

# The one parser of a stack size; the library receives the bytes
# (interpose_stack_set_default) and keeps the limits.  Checked here too,
# before the library is loaded, so that a bad value is one clear line.
# Invariant: these equal interpose_stack_minimum() and
# interpose_stack_maximum() (tests/test_pyver.py checks both).
STACK_MIN = _compat.STACK_MINIMUM
STACK_MAX = 1 << 40

# Set by `interpose run` for the process it starts, which removes it from
# its own environment once booted (children then boot as under `env`): a
# process that must not run its program without the runtime.
BOOT_REQUIRED = "INTERPOSE_BOOT_REQUIRED"


class SettingError(ValueError):
    """An INTERPOSE_* setting has a value interpose cannot use."""


def stack_size(raw, label="INTERPOSE_STACK_SIZE"):
    """Bytes for an INTERPOSE_STACK_SIZE / --stack-size value: digits with an
    optional K or M suffix, at least STACK_MIN.  Raises SettingError naming
    label."""
    m = re.fullmatch(r"(\d+)([kKmM]?)", raw)
    size = 0
    if m:
        size = int(m.group(1)) * {"": 1, "k": 1024, "m": 1 << 20}[m.group(2).lower()]
    if not STACK_MIN <= size <= STACK_MAX:
        raise SettingError(
            f"{label}={raw!r} is not a usable stack size: give"
            f" bytes with an optional K or M suffix, at least {STACK_MIN // 1024}K"
            f" ({_compat.STACK_MINIMUM_REASON}), e.g. 1M")
    return size


def monitor_seconds(raw, label="INTERPOSE_MONITOR"):
    """Seconds for an INTERPOSE_MONITOR / --monitor value: a positive finite
    number.  Raises SettingError naming label."""
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise SettingError(
            f"{label}={raw!r}: the blocking monitor needs a positive"
            " number of seconds (e.g. 0.1)")
    return seconds


def deadlock_mode(raw, label="INTERPOSE_DEADLOCK"):
    """report, exit or off (docs/diagnostics.md).  Raises SettingError."""
    if raw not in DEADLOCK_MODES:
        raise SettingError(
            f"{label}={raw!r} is not one of {', '.join(map(repr, DEADLOCK_MODES))}")
    return raw


DEADLOCK_MODES = ("report", "exit", "off")


def signal_number(raw, label="INTERPOSE_DUMP_SIGNAL"):
    """The signal number for a name (SIGQUIT, QUIT) or a number, which must
    be catchable.  Raises SettingError naming label."""
    import signal

    text = raw.strip().upper()
    if text.isdigit():
        signum = int(text)
    else:
        signum = getattr(signal.Signals, text if text.startswith("SIG") else "SIG" + text,
                         None)
    if signum is None or signum not in signal.valid_signals() or signum in (
            signal.SIGKILL, signal.SIGSTOP):
        raise SettingError(f"{label}={raw!r} is not a signal that can be caught"
                           " (e.g. SIGQUIT)")
    return int(signum)


def _choice(name, allowed):
    def check(raw):
        if raw not in allowed:
            raise SettingError(
                f"{name}={raw!r} is not one of {', '.join(map(repr, allowed))}")
        return raw
    return check


# name: parser of a non-empty value (an empty value means "unset").
PARSERS = {
    "INTERPOSE_AUTOSTART": _choice("INTERPOSE_AUTOSTART", ("0", "1")),
    "INTERPOSE_MAIN_HOOKS": _choice("INTERPOSE_MAIN_HOOKS", ("0", "1")),
    "INTERPOSE_STATS": _choice("INTERPOSE_STATS", ("0", "1")),
    "INTERPOSE_THREADS": _choice("INTERPOSE_THREADS", ("coroutines", "native")),
    "INTERPOSE_STACK_SIZE": stack_size,
    "INTERPOSE_STACK_GUARD": _choice("INTERPOSE_STACK_GUARD",
                                     ("markers", "mprotect")),
    "INTERPOSE_MONITOR": monitor_seconds,
    "INTERPOSE_PREEMPT": _choice("INTERPOSE_PREEMPT", ("threads", "all", "off")),
    # Diagnostics (docs/diagnostics.md).
    "INTERPOSE_CONTROL": _choice("INTERPOSE_CONTROL", ("0", "1")),
    "INTERPOSE_DEADLOCK": deadlock_mode,
    "INTERPOSE_DEADLOCK_LOG": lambda raw: raw,  # a path, opened when needed
    "INTERPOSE_DUMP_SIGNAL": signal_number,
    BOOT_REQUIRED: _choice(BOOT_REQUIRED, ("1",)),
}


def get(name, environ=None):
    """The parsed value of a setting, or None when it is unset or empty.
    Raises SettingError for a bad value."""
    raw = (os.environ if environ is None else environ).get(name, "")
    return PARSERS[name](raw) if raw else None


def problems(environ=None):
    """One line per bad setting in environ (default: os.environ)."""
    found = []
    for name in PARSERS:
        try:
            get(name, environ)
        except SettingError as e:
            found.append(str(e))
    return found


def check(environ=None):
    """Raise SettingError naming every bad setting, in one line."""
    found = problems(environ)
    if found:
        raise SettingError("; ".join(found))
