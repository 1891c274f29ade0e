"""Runs a program after gevent's or eventlet's monkey-patching.

    python patched.py gevent|eventlet PROGRAM.py [ARGS ...]

The patch comes first, as both projects tell users to do, then the program
runs unchanged as __main__ (runpy), with sys.argv as if it had been started
directly.
"""
import runpy
import sys


def main():
    flavour, program = sys.argv[1], sys.argv[2]
    if flavour == "gevent":
        from gevent import monkey
        monkey.patch_all()
    elif flavour == "eventlet":
        import eventlet
        eventlet.monkey_patch()
    else:
        sys.exit(f"patched.py: unknown flavour {flavour!r} (gevent or eventlet)")
    sys.argv = sys.argv[2:]
    runpy.run_path(program, run_name="__main__")


if __name__ == "__main__":
    main()
