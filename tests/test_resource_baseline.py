"""Fds and OS threads return to their baseline once the work is done: the
name-resolution workers exit when idle, and every socket is closed.
"""
import pytest

from support.snippets import assert_same


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fds_and_threads_return_to_baseline():
    # The name workers exit after ~2 s idle: poll for up to 10 s.
    out = assert_same("""
        import psutil, select, selectors, socket, subprocess
        me = psutil.Process()
        fds, threads = me.num_fds(), me.num_threads()

        def work(i):
            l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
            c = socket.create_connection(l.getsockname())
            s, _ = l.accept()
            c.sendall(b"x" * 100000)
            got = 0
            while got < 100000:
                got += len(s.recv(65536))
            a, b = socket.socketpair()
            r, w = os.pipe()
            sel = selectors.DefaultSelector()
            sel.register(a, selectors.EVENT_READ)
            b.send(b"y")
            sel.select(1)
            po = select.poll(); po.register(r, select.POLLIN)
            os.write(w, b"z")
            po.poll(1000)
            socket.getaddrinfo("localhost", 80 + i)
            d = os.dup(c.fileno())
            os.dup2(s.fileno(), d)
            for x in (l, c, s, a, b, sel):
                x.close()
            for fd in (r, w, d):
                os.close(fd)
            return got

        tasks = [go(work, i) for i in range(8)]
        print("moved:", [task.join() for task in tasks])
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        deadline = time.monotonic() + 10
        while (me.num_threads() > threads or me.num_fds() > fds) and time.monotonic() < deadline:
            time.sleep(0.05)
        print("fds back:", me.num_fds() == fds, "threads back:", me.num_threads() == threads)
    """)
    assert out == ["moved: " + str([100000] * 8), "fds back: True threads back: True"]
