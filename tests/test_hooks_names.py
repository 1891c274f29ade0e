"""The name hooks (native/hooks_names.c, DESIGN §6): getaddrinfo,
getnameinfo, gethostbyname*, gethostbyaddr* run on a small worker-thread
pool while the calling coroutine parks; results and errors are libc's, and
the workers exit once idle.

Only names the local hosts file answers ("localhost", numeric addresses)
are looked up, so no test depends on DNS.
"""
import pytest

from support.snippets import assert_same


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_getaddrinfo_localhost_matches_libc_while_others_run():
    # Each lookup parks the coroutine, so the ticker gets to run while the
    # loop goes on; a lookup that blocked the thread would starve it (the
    # loop would then end on its count, with no ticks, and fail below).
    out = assert_same("""
        import socket
        t = Ticker()
        k = t.ticks
        results = set()
        lookups = 0
        while t.ticks < k + 3 and lookups < 20000:
            results.add(repr(socket.getaddrinfo("localhost", 80)))
            lookups += 1
        t.stop()
        print("ticked during lookups:", t.ticks > k)
        print("distinct results:", len(results))
        print(results.pop())
    """)
    assert out[:2] == ["ticked during lookups: True", "distinct results: 1"]
    assert "127.0.0.1" in out[2]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_getaddrinfo_variants_match_libc_from_many_coroutines():
    out = assert_same("""
        import socket
        queries = [
            ("localhost", 80),
            ("localhost", "http", socket.AF_INET, socket.SOCK_STREAM),
            ("127.0.0.1", 443, 0, socket.SOCK_DGRAM),
            ("::1", 22, socket.AF_INET6, 0, 0, socket.AI_NUMERICHOST),
            (None, 8080, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_PASSIVE),
            ("localhost", None, socket.AF_INET),
            ("127.0.0.1", 80, 0, 0, 0, socket.AI_CANONNAME | socket.AI_NUMERICHOST),
        ]

        def lookup(q):
            try:
                return repr(socket.getaddrinfo(*q))
            except OSError as e:
                return "error " + repr(e.args)

        t = Ticker()
        tasks = [go(lookup, q) for q in queries * 5]
        results = [task.join() for task in tasks]
        t.stop()
        for i, q in enumerate(queries):
            same_each_time = all(r == results[i] for r in results[i::len(queries)])
            print(q, same_each_time, results[i])
    """)
    assert len(out) == 7
    assert all(" True " in line for line in out), out


@pytest.mark.timeout(120)
def test_getaddrinfo_errors_match_libc():
    out = assert_same("""
        import socket
        t = Ticker()

        def lookup(*q):
            try:
                return repr(socket.getaddrinfo(*q))
            except socket.gaierror as e:
                return "gaierror " + repr(e.args)

        print(go(lookup, "127.0.0.1", "no-such-service-xyz").join())
        print(go(lookup, "not a host", 80, 0, 0, 0, socket.AI_NUMERICHOST).join())
        print(go(lookup, "127.0.0.1", 80, socket.AF_INET6, 0, 0, socket.AI_NUMERICHOST).join())
        print(go(lookup, None, None).join())
        t.stop()
    """)
    import socket
    assert out[0] == f"gaierror ({socket.EAI_SERVICE}, 'Servname not supported for ai_socktype')"
    assert out[1].startswith(f"gaierror ({socket.EAI_NONAME},")
    assert out[3].startswith(f"gaierror ({socket.EAI_NONAME},")


@pytest.mark.timeout(120)
def test_getnameinfo_and_gethostby_match_libc():
    out = assert_same("""
        import socket
        t = Ticker()
        calls = [
            (socket.getnameinfo, ("127.0.0.1", 80), 0),
            (socket.getnameinfo, ("127.0.0.1", 22), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
            (socket.getnameinfo, ("::1", 22), socket.NI_NUMERICHOST),
            (socket.getnameinfo, ("127.0.0.1", 53), socket.NI_DGRAM),
            (socket.gethostbyname, "localhost"),
            (socket.gethostbyname, "127.0.0.1"),
            (socket.gethostbyname_ex, "localhost"),
            (socket.gethostbyaddr, "127.0.0.1"),
        ]

        def call(fn, *args):
            try:
                return repr(fn(*args))
            except OSError as e:
                return type(e).__name__ + " " + repr(e.args)

        tasks = [go(call, *c) for c in calls]
        for c, task in zip(calls, tasks):
            print(c[0].__name__, c[1:], task.join())
        print("ticked:", t.stop() > 0)
    """)
    assert len(out) == 9 and out[-1] == "ticked: True"
    assert "('localhost', 'http')" in out[0]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_lookup_worker_threads_exit_when_idle():
    # Workers exit after about 2 s without work: poll for up to 10 s.
    out = assert_same("""
        import psutil, socket
        me = psutil.Process()
        threads, fds = me.num_threads(), me.num_fds()
        tasks = [go(socket.getaddrinfo, "localhost", 80) for _ in range(16)]
        for task in tasks:
            task.join()
        socket.gethostbyname("localhost")
        deadline = time.monotonic() + 10
        while me.num_threads() > threads and time.monotonic() < deadline:
            time.sleep(0.05)
        print("threads back:", me.num_threads() == threads, "fds back:", me.num_fds() == fds)
    """)
    assert out == ["threads back: True fds back: True"]
