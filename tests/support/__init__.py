"""Helpers the tests import, one concern a module:

  snippets   run code in a fresh interpreter: plain, hooked under
             `python -m interpose run`, or both with outputs compared
  probes     what the test process sees of its own threads and coroutines
  processes  whole programs in process groups, killed at the end
  programs   programs under `interpose run` watched from outside (ready
             line, `interpose ps`, the deadlock watcher)
  servers    real PostgreSQL, MariaDB, redis and HTTP servers on loopback
  drivers    the cooperation and failure checks every driver test runs
  install    checkout copies, built distributions, fresh venvs
  aarch64    the arm64 CPython under qemu-user with the cross-built wheel
  stack_overflow  snippets that recurse deep or overflow a coroutine's stack

pytest puts tests/ on sys.path (the rootdir-relative "prepend" import mode,
tests/ being no package), so `from support.snippets import ...` works from
the checkout and from scripts/test-installed's directory outside it alike.
conftest.py holds only fixtures and hooks: a test module never imports
conftest.py or another test module.
"""
