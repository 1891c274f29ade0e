"""Recovery in a forked child (native/fork.c): what the child forgets of
the parent's schedulers must not reach back into the parent."""
import subprocess
import sys
import textwrap

import pytest


@pytest.mark.timeout(90)
def test_fork_from_plain_thread_keeps_parents_fd_registration():
    # Regression: fork.c reset the fd table only when the forking thread had
    # a scheduler.  Forked from a plain OS thread, the child kept the
    # parent's registrations, and its first wait on the fd the parent's
    # coroutine waits on removed that fd from the epoll set parent and child
    # share and woke the parent's waiters from the child.
    # Acceptable: the child's wait times out (exit 0) and the parent's
    # waiter wakes when the fd becomes readable.  Unacceptable: the child
    # fails or crashes, the parent's waiter returns False (its wait ended
    # without the fd becoming readable) or never wakes.
    code = textwrap.dedent("""
        import os, threading, interpose

        r, w = os.pipe()

        def waiter():
            ready.set()
            return interpose.wait_readable(r, 10)

        def fork_from_plain_thread(out):
            pid = os.fork()
            if pid == 0:
                got = interpose.run(interpose.wait_readable, r, 0.01)
                os._exit(0 if got is False else 3)
            out.append(os.waitpid(pid, 0)[1])

        def main():
            global ready
            ready = interpose.Event()
            c = interpose.spawn(waiter, name="waiter")
            ready.wait()  # the waiter runs next and parks on r
            out = []
            t = threading.Thread(target=fork_from_plain_thread, args=(out,))
            t.start()
            t.join()
            print("child exit status", out[0], flush=True)
            os.write(w, b"x")
            print("parent waiter woke", c.join(), flush=True)

        interpose.run(main)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=80)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["child exit status 0",
                                        "parent waiter woke True"], proc
