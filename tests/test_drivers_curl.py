"""libcurl through pycurl (the wheel's bundled libcurl and OpenSSL), easy
and multi interfaces, over HTTP and HTTPS, against a local server with a
slow handler: transfers on coroutines overlap, and the failure paths
raise pycurl.error with libcurl's usual codes.

The servers run on threads of the test process (tests/support/servers.py), one
per scheme for this module, and are stopped at its end.
"""
import pytest

from support import servers
from support.drivers import check_cooperation, check_failures_same

COMMON = r'''
import io
import pycurl

def _easy(url, opts):
    curl = pycurl.Curl()
    body = io.BytesIO()
    curl.setopt(pycurl.URL, url)
    curl.setopt(pycurl.WRITEDATA, body)
    if "cafile" in ARGS:
        curl.setopt(pycurl.CAINFO, ARGS["cafile"])
    for name, value in opts.items():
        curl.setopt(getattr(pycurl, name), value)
    return curl, body
'''

EASY = COMMON + r'''
def fetch_all(urls, **opts):
    """One easy handle after another (each perform waits inside libcurl)."""
    results = []
    for url in urls:
        curl, body = _easy(url, opts)
        try:
            curl.perform()
            results.append((curl.getinfo(pycurl.RESPONSE_CODE),
                            body.getvalue().decode()))
        finally:
            curl.close()
    return results
'''

MULTI = COMMON + r'''
def fetch_all(urls, **opts):
    """All URLs at once on one multi handle, driven the classic way:
    perform, then select() on libcurl's sockets."""
    multi = pycurl.CurlMulti()
    handles = [_easy(url, opts) for url in urls]
    errors = {}
    try:
        for curl, _ in handles:
            multi.add_handle(curl)
        active = len(handles)
        while active:
            ret = pycurl.E_CALL_MULTI_PERFORM
            while ret == pycurl.E_CALL_MULTI_PERFORM:
                ret, active = multi.perform()
            _, _, failed = multi.info_read()
            for curl, code, message in failed:
                errors[id(curl)] = pycurl.error(code, message)
            if active:
                multi.select(1.0)
        results = []
        for curl, body in handles:
            if id(curl) in errors:
                raise errors[id(curl)]
            results.append((curl.getinfo(pycurl.RESPONSE_CODE),
                            body.getvalue().decode()))
        return results
    finally:
        for curl, _ in handles:
            multi.remove_handle(curl)
            curl.close()
        multi.close()
'''

INTERFACES = {"easy": EASY, "multi": MULTI}

# Two transfers per task: the multi interface runs them together, the easy
# one back to back (so each easy task takes two slow replies' time).
SLOW = r'''
def slow(i, seconds):
    urls = [f"{ARGS['base']}/slow?s={seconds}&i={i}.{k}" for k in range(2)]
    if ARGS["interface"] == "easy":
        urls = urls[:1]
    return [(code, body.rsplit("&i=", 1)[1]) for code, body in fetch_all(urls)]

def expected(i):
    n = 1 if ARGS["interface"] == "easy" else 2
    return [(200, f"{i}.{k}") for k in range(n)]
'''

FAILURES = r'''
def one(url, **opts):
    return fetch_all([url], **opts)[0]

case("refused", lambda: one(ARGS["refused_url"]))
case("timeout", lambda: one(f"{ARGS['base']}/slow?s=3", TIMEOUT_MS=300),
     lasts=True)
case("blackhole", lambda: one(ARGS["blackhole_scheme"] + f"://127.0.0.1:{BLACKHOLE_PORT}/",
                              TIMEOUT_MS=300), lasts=True)
case("hangup", lambda: one(f"{ARGS['base']}/hangup?s=0.3"), lasts=True)
print("after", one(f"{ARGS['base']}/slow?s=0")[0])
'''


@pytest.fixture(scope="module")
def http():
    with servers.http_server() as info:
        yield info


@pytest.fixture(scope="module")
def https():
    with servers.http_server(tls=True) as info:
        yield info


def _args(server, interface):
    args = {"base": server["url"], "interface": interface}
    if "cafile" in server:
        args["cafile"] = server["cafile"]
    return args


@pytest.mark.slow
@pytest.mark.parametrize("interface", sorted(INTERFACES))
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_curl_slow_transfers_on_coroutines_overlap(request, scheme, interface):
    server = request.getfixturevalue(scheme)
    check_cooperation(INTERFACES[interface] + SLOW, _args(server, interface))


@pytest.mark.slow
@pytest.mark.parametrize("interface", sorted(INTERFACES))
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_curl_failures_raise_libcurls_errors(request, scheme, interface):
    server = request.getfixturevalue(scheme)
    args = _args(server, interface)
    args["refused_url"] = f"{scheme}://127.0.0.1:{servers.closed_port()}/"
    args["blackhole_scheme"] = scheme
    lines = check_failures_same(INTERFACES[interface] + FAILURES, args)
    print("\n".join(lines))
    # CURLE_COULDNT_CONNECT 7, CURLE_OPERATION_TIMEDOUT 28, and for a
    # server that hangs up CURLE_GOT_NOTHING 52 (HTTP) or a receive/TLS
    # error (HTTPS).
    assert lines[0] == "refused error 7", lines
    assert lines[1] == "timeout error 28 ticked True", lines
    assert lines[2] == "blackhole error 28 ticked True", lines
    if scheme == "http":
        assert lines[3] == "hangup error 52 ticked True", lines
    else:
        assert lines[3].startswith("hangup error ") and lines[3].endswith(" ticked True"), lines
    assert lines[-1] == "after 200", lines



# libcurl's threaded resolver: a name lookup runs getaddrinfo on a thread
# of libcurl's own, which no hook parks; the transfer's coroutine waits for
# it cooperatively.  report() gives the peak thread count seen during the
# transfers, which shows those threads exist.
RESOLVER = r'''
vi = pycurl.version_info()
assert vi[4] & pycurl.VERSION_ASYNCHDNS and vi[9] is None, "not the threaded resolver"  # vi[9]: c-ares version
_peak = [0]
_plain_fetch_all = fetch_all

def fetch_all(urls, **opts):
    done = []

    def watch():
        while not done:
            _peak[0] = max(_peak[0], psutil.Process().num_threads())
            time.sleep(0.001)
    watcher = go(watch)
    try:
        return _plain_fetch_all(urls, **opts)
    finally:
        done.append(True)
        watcher.join()

def report():
    return _peak[0]
'''


@pytest.mark.slow
def test_curl_name_lookups_on_libcurls_threads_still_overlap(http):
    name = servers.loopback_name()
    args = {"base": f"http://{name}:{http['port']}", "interface": "easy"}
    out = check_cooperation("import psutil\n" + EASY + RESOLVER + SLOW, args)
    # The main thread plus at least one resolver thread of libcurl's.
    assert out["report"] >= 2, out
