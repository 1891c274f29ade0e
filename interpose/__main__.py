"""The command line: python -m interpose (demo | info)."""
import argparse
import os
import sys


def _info(args):
    from . import _compat

    print(f"python: {sys.version.split()[0]} ({sys.executable})")
    reason = _compat.unsupported_reason()
    print(f"interpreter supported: {'yes' if reason is None else 'no: ' + reason}")
    try:
        from . import _native
        from ._version import __version__
    except ImportError as e:
        print(f"native library: not usable: {e}")
        return 1
    print(f"interpose: {__version__}")
    print(f"native library: {_native.LIBRARY_PATH}")
    print(f"build id: {_native.lib.build_id().decode()}")
    print(f"default stack: {_native.lib.stack_default()} bytes")
    preload = os.environ.get("LD_PRELOAD", "")
    print(f"preloaded: {'yes' if 'libinterpose' in preload else 'no'}")
    return 0


def _demo(args):
    from . import _demo

    return _demo.main(coroutines=args.coroutines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="interpose",
        description="Run blocking Python code on coroutines.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the built-in demo (no arguments needed)")
    demo.add_argument("--coroutines", type=int, default=10_000,
                      help="how many coroutines to spawn (default 10000)")
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="print the version, library and support")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
