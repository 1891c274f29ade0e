"""Real database and HTTP servers on 127.0.0.1, for the driver tests and
scripts/bench_drivers.py: each is a context manager that starts a private
server (ephemeral port, data in a temporary directory) and stops it.

A server whose program is missing raises ServerMissing naming the Debian
package to install, so a test fails loudly instead of being skipped.
"""
import contextlib
import glob
import http.server
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

START_TIMEOUT = 60


class ServerMissing(RuntimeError):
    """A server program is not installed."""


def _server_env():
    """The environment for the servers (and their tools): this process's,
    without preloads.  The servers are not what the tests test; under
    scripts/asan-tests the sanitizer runtimes the suite preloads would
    otherwise be loaded into PostgreSQL and MariaDB too."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("INTERPOSE_", "ASAN_", "UBSAN_"))}
    env.pop("LD_PRELOAD", None)
    return env



def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port():
    """A port that refuses connections (for the connection-refused tests)."""
    return free_port()


def loopback_name():
    """A name /etc/hosts maps to 127.x other than localhost, for tests that
    need a real name lookup without the network (libcurl answers
    localhost itself, without its resolver)."""
    with open("/etc/hosts") as f:
        for line in f:
            words = line.split("#")[0].split()
            if len(words) >= 2 and words[0].startswith("127."):
                for name in words[1:]:
                    if not name.startswith("localhost"):
                        return name
    raise AssertionError(
        "/etc/hosts maps no name but localhost to 127.x: this test needs one "
        "(Debian puts the host name there) to make libcurl resolve a name")


def _find(program, package, extra_globs=()):
    for pattern in extra_globs:
        # The newest version directory (/usr/lib/postgresql/15/bin, ...).
        found = sorted(glob.glob(pattern), key=lambda p: [
            int(part) if part.isdigit() else -1 for part in p.split("/")])
        if found:
            return found[-1]
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if path is None:
        raise ServerMissing(
            f"{program} not found: install the Debian package {package} "
            "(scripts/install-test-deps does)")
    return path


def _wait_port(port, proc, log_path):
    """Return once the server accepts TCP connections; raise with its log
    if it died or never did."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    log = ""
    if log_path and os.path.exists(log_path):
        with open(log_path, errors="replace") as f:
            log = f.read()[-4000:]
    raise RuntimeError(f"server on port {port} did not start; log:\n{log}")


def _wait_log(log_path, text, proc):
    """Return once the server's log says text (PostgreSQL accepts TCP
    connections while it is still starting up, and refuses queries then)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        with open(log_path, errors="replace") as f:
            if text in f.read():
                return
        time.sleep(0.05)
    with open(log_path, errors="replace") as f:
        log = f.read()[-4000:]
    raise RuntimeError(f"server never logged {text!r}; log:\n{log}")


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _as_user(user):
    """preexec_fn dropping root to user (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return None, None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ServerMissing(f"no user {user!r} to run the server as: install "
                            "the Debian package postgresql (scripts/install-test-deps does)") from None

    def demote():
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    return demote, pw


# ---- PostgreSQL ------------------------------------------------------------

@contextlib.contextmanager
def postgres(tls=False):
    """A private PostgreSQL cluster: yields a dict with host, port, user,
    dbname and dsn.  Superuser `postgres`, trust authentication on
    loopback, fsync off.  With tls, the server also offers TLS with a
    self-signed certificate (the dsn then asks for sslmode=require)."""
    pg_globs = ["/usr/lib/postgresql/*/bin/initdb"]
    initdb = _find("initdb", "postgresql", pg_globs)
    bindir = os.path.dirname(initdb)
    postgres_bin = os.path.join(bindir, "postgres")
    demote, pw = _as_user("postgres")
    tmp = tempfile.mkdtemp(prefix="interpose-pg-")
    proc = None
    try:
        if pw is not None:
            os.chown(tmp, pw.pw_uid, pw.pw_gid)
        data = os.path.join(tmp, "data")
        subprocess.run(
            [initdb, "-D", data, "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync", "--locale=C"],
            check=True, capture_output=True, preexec_fn=demote, cwd=tmp, env=_server_env())
        port = free_port()
        options = ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                   "-c", "max_connections=100", "-c", "logging_collector=off"]
        if tls:
            cert, key = self_signed_cert(tmp)
            if pw is not None:  # the server refuses a key others can read
                os.chown(key, pw.pw_uid, pw.pw_gid)
            os.chmod(key, 0o600)
            options += ["-c", "ssl=on", "-c", f"ssl_cert_file={cert}",
                        "-c", f"ssl_key_file={key}"]
        log_path = os.path.join(tmp, "log")
        with open(log_path, "w") as log:
            if pw is not None:
                os.chown(log_path, pw.pw_uid, pw.pw_gid)
            proc = subprocess.Popen(
                [postgres_bin, "-D", data, "-p", str(port), "-k", tmp,
                 *options],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=demote,
                stdin=subprocess.DEVNULL, cwd=tmp, env=_server_env())
        _wait_log(log_path, "database system is ready to accept connections", proc)
        _wait_port(port, proc, log_path)
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        if tls:
            dsn += " sslmode=require"
        yield {"host": "127.0.0.1", "port": port, "user": "postgres",
               "dbname": "postgres", "dsn": dsn}
    finally:
        if proc is not None:
            _stop(proc)  # SIGTERM: PostgreSQL's smart shutdown
        shutil.rmtree(tmp, ignore_errors=True)


# ---- MariaDB ---------------------------------------------------------------

@contextlib.contextmanager
def mariadb():
    """A private mariadbd: yields host, port, user (root, no password)."""
    install_db = _find("mariadb-install-db", "mariadb-server")
    mariadbd = _find("mariadbd", "mariadb-server")
    tmp = tempfile.mkdtemp(prefix="interpose-mariadb-")
    proc = None
    user = ["--user=root"] if os.geteuid() == 0 else []
    try:
        data = os.path.join(tmp, "data")
        subprocess.run(
            [install_db, "--no-defaults", f"--datadir={data}", *user,
             "--auth-root-authentication-method=normal", "--skip-test-db",
             "--skip-name-resolve"],
            check=True, capture_output=True, cwd=tmp, env=_server_env())
        port = free_port()
        log_path = os.path.join(tmp, "log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [mariadbd, "--no-defaults", f"--datadir={data}", *user,
                 f"--port={port}", "--bind-address=127.0.0.1",
                 f"--socket={tmp}/sock", f"--pid-file={tmp}/pid",
                 "--skip-name-resolve", "--skip-log-bin",
                 "--innodb-buffer-pool-size=16M", "--max-connections=200"],
                stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=tmp, env=_server_env())
        _wait_log(log_path, "ready for connections", proc)
        _wait_port(port, proc, log_path)
        yield {"host": "127.0.0.1", "port": port, "user": "root"}
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


# ---- redis -----------------------------------------------------------------

@contextlib.contextmanager
def redis():
    """A private redis-server without persistence: yields host and port."""
    server = _find("redis-server", "redis-server")
    tmp = tempfile.mkdtemp(prefix="interpose-redis-")
    proc = None
    try:
        port = free_port()
        log_path = os.path.join(tmp, "log")
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", tmp,
             "--logfile", log_path, "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT, cwd=tmp, env=_server_env())
        _wait_port(port, proc, log_path)
        yield {"host": "127.0.0.1", "port": port}
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


# ---- HTTP and HTTPS --------------------------------------------------------

class _SlowHandler(http.server.BaseHTTPRequestHandler):
    """GET /slow?s=SECONDS answers after SECONDS with the path as body;
    GET /hangup?s=SECONDS closes the connection without answering after
    SECONDS (a server dying mid-request)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        seconds = float(urllib.parse.parse_qs(url.query).get("s", ["0"])[0])
        # Interruptible, so that no handler outlives the server's fixture.
        self.server.stopping.wait(seconds)
        if url.path == "/hangup":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, *args):
        self.stopping = threading.Event()
        super().__init__(*args)

    def handle_error(self, request, client_address):
        # Clients that time out or are killed on purpose go away mid-reply;
        # that is what the failure tests do, not a server error.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def self_signed_cert(tmp):
    """A certificate for 127.0.0.1 and localhost, made with openssl."""
    openssl = _find("openssl", "openssl")
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, env=_server_env())
    return cert, key


@contextlib.contextmanager
def http_server(tls=False):
    """A threaded HTTP (or HTTPS) server with _SlowHandler, on threads of
    this process: yields url (no trailing slash) and, for TLS, cafile."""
    tmp = tempfile.mkdtemp(prefix="interpose-http-")
    server = _Server(("127.0.0.1", 0), _SlowHandler)
    thread = None
    try:
        info = {}
        scheme = "http"
        if tls:
            cert, key = self_signed_cert(tmp)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
            info["cafile"] = cert
            scheme = "https"
        thread = threading.Thread(target=server.serve_forever,
                                  kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        info["url"] = f"{scheme}://127.0.0.1:{server.server_address[1]}"
        info["port"] = server.server_address[1]
        yield info
    finally:
        if thread is not None:
            server.stopping.set()
            server.shutdown()
            thread.join()
        server.server_close()
        shutil.rmtree(tmp, ignore_errors=True)
