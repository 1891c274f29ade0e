"""`interpose ps PID` from another process: it shows a server's 200 parked
HTTP connections, rejects bad input with one line, and is refused when the
program's control socket is off.

Every program runs under `python -m interpose run` in a session of its own
and is killed as a group at the end of its test; only 127.0.0.1 is used.
"""
import os
import re
import socket
import subprocess

import pytest

from support.programs import WAIT, interpose_ps, poll_until, read_ready, start_program


HTTP_CONNECTIONS = 200


@pytest.mark.timeout(120)
def test_ps_shows_200_parked_http_connections_from_outside(procs, tmp_path):
    server = start_program(procs, tmp_path, """
        import sys
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(204); self.end_headers()
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        print("ready", httpd.server_address[1], flush=True)
        httpd.serve_forever()
    """)
    port = int(read_ready(server)[0])
    clients = []
    try:
        for _ in range(HTTP_CONNECTIONS):
            # Half a request line: each handler thread parks in recv.
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(b"GET / HT")
            clients.append(c)
        ports = {c.getsockname()[1] for c in clients}

        def parked():
            text = interpose_ps(server.pid).stdout
            seen = set(map(int, re.findall(
                r"parked: recv fd \d+ from 127\.0\.0\.1:(\d+)", text)))
            return text if seen >= ports else None

        text = poll_until(parked, f"{HTTP_CONNECTIONS} connections parked in recv")
        blocks = text.split("\ncoroutine ")
        for p in ports:
            block = next(b for b in blocks if f"from 127.0.0.1:{p}\n" in b)
            assert "in handle_one_request" in block and "readline" in block, block
        assert re.search(r"parked: poll: accept fd \d+ on 127\.0\.0\.1:%d" % port, text)
        assert "in serve_forever" in text
        stats = interpose_ps(server.pid, "--stats")
        assert stats.returncode == 0 and f"{HTTP_CONNECTIONS} spawned coroutine(s) alive" in stats.stdout, stats
    finally:
        for c in clients:
            c.close()


def test_ps_rejects_bad_input_with_one_line():
    bad = interpose_ps("x")
    assert bad.returncode == 2 and bad.stderr == "interpose: ps needs a process id, not 'x'\n"
    gone = interpose_ps(os.getpid())  # this test process does not run under interpose
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1
    assert "has no interpose control socket" in gone.stderr


def test_ps_is_refused_when_the_control_socket_is_off(procs, tmp_path):
    proc = start_program(procs, tmp_path, """
        import sys
        print("ready", flush=True)
        sys.stdin.read()
    """, env={"INTERPOSE_CONTROL": "0"}, stdin=subprocess.PIPE)
    read_ready(proc)
    assert interpose_ps(proc.pid).returncode == 1
    proc.stdin.close()
    assert proc.wait(WAIT) == 0
