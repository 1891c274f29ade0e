"""Time slicing (native/preempt.c, docs/time-slicing.md): under
`interpose run`, threads that are coroutines take turns at bytecode
boundaries as OS threads do.  Every test counts (iterations, ticks,
preemptions, retransmissions) instead of timing; durations only bound how
long a snippet runs."""
import textwrap

import pytest

from support.snippets import assert_same, check_ok, run_hooked, run_plain

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_tight_loop_thread_lets_main_stop_it():
    # test_threading's test_can_interrupt_tight_loops: the main thread spins
    # until the worker has started, then stops the worker's spin through a
    # flag; neither ever reaches a hooked call while spinning.
    code = """
        cont, started, interrupted = [True], [False], [False]
        def worker():
            iterations = 100_000_000
            started[0] = True
            while cont[0]:
                if iterations:
                    iterations -= 1
                else:
                    return
            interrupted[0] = True
        t = threading.Thread(target=worker)
        t.start()
        while not started[0]:
            pass
        cont[0] = False
        t.join()
        print("interrupted", interrupted[0])
        if HOOKED:
            print("preempted", interpose.statistics().preemptions >= 1, file=sys.stderr)
    """
    hooked, plain = run_hooked(code), run_plain(code)
    assert hooked.returncode == plain.returncode == 0, (hooked, plain)
    assert hooked.stdout == plain.stdout == "interrupted True\n"
    assert hooked.stderr == "preempted True\n", hooked


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_cpu_bound_thread_shares_are_each_at_least_half_fair(n):
    proc = run_hooked(f"""
        n = {n}
        counts = [0] * n
        stop = False
        def spin(i):
            c = 0
            while not stop:
                c += 1
            counts[i] = c
        ts = [threading.Thread(target=spin, args=(i,)) for i in range(n)]
        for t in ts: t.start()
        time.sleep(2)
        stop = True
        for t in ts: t.join()
        fair = sum(counts) / n
        print("shares", [round(c / fair, 2) for c in counts])
        print("fair", all(c >= fair / 2 for c in counts))
        print("turns", interpose.statistics().preemptions >= 4 * n)
    """)
    assert proc.returncode == 0 and proc.stderr == "", proc
    lines = proc.stdout.splitlines()
    assert lines[1:] == ["fair True", "turns True"], proc.stdout


def test_sleeping_thread_runs_right_after_the_running_slice():
    # An I/O thread (here: sleeping 10 ms at a time) beside four spinning
    # threads: once its timer is due it runs after at most the slice in
    # progress, not after a round of every spinner.  Counted in preemptions
    # between going to sleep and running again.
    lines = check_ok(run_hooked("""
        stop = False
        def spin():
            while not stop:
                pass
        ts = [threading.Thread(target=spin) for _ in range(4)]
        for t in ts: t.start()
        waits = []
        for _ in range(40):
            before = interpose.statistics().preemptions
            time.sleep(0.01)
            waits.append(interpose.statistics().preemptions - before)
        stop = True
        for t in ts: t.join()
        waits.sort()
        print("median within two slices", waits[len(waits) // 2] <= 2)
        print("worst within four slices", waits[-1] <= 4)
    """))
    assert lines == ["median within two slices True", "worst within four slices True"]


def test_signal_handler_runs_within_a_slice_while_threads_spin():
    # A spinning thread raises SIGUSR1 (delivered to the process's only OS
    # thread, whose C handler runs at once) and keeps spinning; the Python
    # handler must run in the main thread after at most a couple of
    # preemptions, as a plain main thread gets it within a switch interval.
    code = """
        import signal
        seen = []
        def handler(signum, frame):
            seen.append((threading.current_thread() is threading.main_thread(),
                         interpose.statistics().preemptions if HOOKED else 0))
        signal.signal(signal.SIGUSR1, handler)
        stop = False
        raised = []
        def spin():
            raised.append(interpose.statistics().preemptions if HOOKED else 0)
            signal.raise_signal(signal.SIGUSR1)
            while not stop:
                pass
        t = threading.Thread(target=spin)
        t.start()
        while not seen:
            time.sleep(0.001)
        stop = True
        t.join()
        in_main, at = seen[0]
        print("in main", in_main, "slices", at - raised[0] <= 3)
    """
    assert assert_same(code) == ["in main True slices True"]


def test_keyboard_interrupt_stops_a_tight_loop_in_main():
    # SIGINT sent by a thread while the main thread spins in pure Python
    # (and the thread then spins too): KeyboardInterrupt in the main thread,
    # exit status 130 when uncaught.
    code = """
        import os, signal
        go_on = True
        spinning = False
        def killer():
            while not spinning:
                pass
            os.kill(os.getpid(), signal.SIGINT)
            while go_on:
                pass
        threading.Thread(target=killer, daemon=True).start()
        try:
            spinning = True
            while True:
                pass
        except KeyboardInterrupt:
            print("KeyboardInterrupt in", threading.current_thread().name)
        go_on = False
    """
    assert assert_same(code) == ["KeyboardInterrupt in MainThread"]


# Two spinners that log their tag every 500,000 iterations and never reach
# a hooked call: one after the other when cooperative (6 tags each at the
# default length), interleaved when preempted (40 each at 20,000,000).
SPINNERS = """
def spin(log, tag, n=3_000_000):
    for i in range(n):
        if i % 500_000 == 0:
            log.append(tag)

def interleaved(log):
    return "".join(log) not in ("a" * 40 + "b" * 40, "b" * 40 + "a" * 40)
"""


def test_spawned_coroutines_are_cooperative_unless_they_opt_in():
    lines = check_ok(run_hooked(SPINNERS + textwrap.dedent("""
        log = []
        a = interpose.spawn(spin, log, "a")
        b = interpose.spawn(spin, log, "b")
        a.join(); b.join()
        print("cooperative", "".join(log))
        log = []
        a = interpose.spawn(spin, log, "a", 20_000_000, preemptible=True)
        b = interpose.spawn(spin, log, "b", 20_000_000, preemptible=True)
        a.join(); b.join()
        print("interleaved", interleaved(log))
    """)))
    assert lines == ["cooperative aaaaaabbbbbb", "interleaved True"]


def test_interpose_preempt_all_makes_spawned_coroutines_preemptible():
    lines = check_ok(run_hooked(SPINNERS + textwrap.dedent("""
        log = []
        a = interpose.spawn(spin, log, "a", 20_000_000)
        b = interpose.spawn(spin, log, "b", 20_000_000)
        a.join(); b.join()
        print("interleaved", interleaved(log))
    """), env={"INTERPOSE_PREEMPT": "all"}))
    assert lines == ["interleaved True"]


def test_interpose_preempt_off_keeps_threads_cooperative():
    lines = check_ok(run_hooked(SPINNERS + textwrap.dedent("""
        log = []
        ts = [threading.Thread(target=spin, args=(log, t)) for t in "ab"]
        for t in ts: t.start()
        for t in ts: t.join()
        print("".join(log), interpose.statistics().preemptions)
    """), env={"INTERPOSE_PREEMPT": "off"}))
    assert lines == ["aaaaaabbbbbb 0"]


def test_bad_interpose_preempt_value_is_refused_in_one_line():
    # As every INTERPOSE_* setting (_settings.py): interpose run refuses to
    # start the program, saying why in one line.
    proc = run_hooked("print('ran')", env={"INTERPOSE_PREEMPT": "sometimes"})
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert proc.stderr.count("\n") == 1 and "INTERPOSE_PREEMPT='sometimes'" in proc.stderr


def test_spawn_rejects_a_non_bool_preemptible():
    lines = check_ok(run_hooked("""
        try:
            interpose.spawn(print, preemptible="yes")
        except TypeError as e:
            print(e)
    """))
    assert lines == ["preemptible must be True, False or None"]


def test_switch_interval_sets_the_slice_length():
    # The same work is preempted far more often with a 1 ms switch
    # interval than with a 20 ms one.
    lines = check_ok(run_hooked("""
        def work():
            stop = [False]
            def spin():
                while not stop[0]:
                    pass
            ts = [threading.Thread(target=spin) for _ in range(2)]
            for t in ts: t.start()
            before = interpose.statistics().preemptions
            time.sleep(0.6)
            stop[0] = True
            for t in ts: t.join()
            return interpose.statistics().preemptions - before
        sys.setswitchinterval(0.020)
        slow = work()
        sys.setswitchinterval(0.001)
        fast = work()
        print("more turns", fast > 3 * slow, file=sys.stdout)
    """))
    assert lines == ["more turns True"]


ACCEPT_SNIPPET = """
    import http.client, http.server, socket, struct
    from concurrent.futures import ThreadPoolExecutor
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        def log_message(self, *args):
            pass
    import socketserver
    if BACKLOG is None:
        # The version's default backlog, which ThreadingHTTPServer does not
        # change: 5 up to 3.14, socket.SOMAXCONN from 3.15.
        Server = http.server.ThreadingHTTPServer
        assert Server.request_queue_size == socketserver.TCPServer.request_queue_size
    else:
        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = BACKLOG
    server = Server(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    serving = threading.Thread(target=server.serve_forever)
    serving.start()
    def call(i):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", f"/{i}")
        # tcpi_total_retrans: a SYN dropped on a full accept queue, and
        # every other retransmission, counts here.
        info = conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        body = conn.getresponse().read()
        conn.close()
        return body, struct.unpack_from("I", info, 100)[0]
    with ThreadPoolExecutor(300) as pool:
        results = list(pool.map(call, range(300)))
    server.shutdown(); serving.join(); server.server_close()
    print(sum(body == b"ok" for body, _ in results), "ok")
    print("retransmissions", sum(r for _, r in results))
"""


@pytest.mark.parametrize("backlog", [None, 5], ids=["default_backlog", "backlog_5"])
def test_threading_http_server_300_clients_no_stalls(backlog):
    # The case: ThreadingHTTPServer and 300 client threads of a
    # ThreadPoolExecutor in the same process.  Every request succeeds and
    # no client ever retransmits (a dropped SYN would).  Run with the
    # version's default backlog (socketserver's, 5 up to 3.14 and SOMAXCONN
    # from 3.15) and with an explicit backlog of 5, where the accept queue
    # overflows unless the server thread gets its turns to accept.
    code = f"BACKLOG = {backlog!r}\n" + textwrap.dedent(ACCEPT_SNIPPET)
    lines = check_ok(run_hooked(code, timeout=150), "hooked")
    assert lines == ["300 ok", "retransmissions 0"]
