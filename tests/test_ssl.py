"""TLS over hooked sockets: ssl's client and server, each in a coroutine,
handshake and exchange data through the hooked calls.
"""
import pytest

from support import servers
from support.snippets import assert_same


@pytest.fixture
def self_signed_cert(tmp_path):
    return servers.self_signed_cert(str(tmp_path))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ssl_client_and_server_over_hooked_sockets(self_signed_cert):
    cert, key = self_signed_cert
    out = assert_same(f"""
        import hashlib, socket, ssl
        cert, key = {cert!r}, {key!r}
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(cert, key)
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.load_verify_locations(cert)
        l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
        payload = os.urandom(256 * 1024)
        t = Ticker()

        def server():
            conn, _ = l.accept()
            with sctx.wrap_socket(conn, server_side=True) as s:
                h = hashlib.sha256()
                n = 0
                while n < len(payload):
                    data = s.recv(65536)
                    h.update(data)
                    n += len(data)
                s.sendall(h.hexdigest().encode())
                return s.recv(100)

        def client():
            t0 = t.ticks
            raw = socket.create_connection(l.getsockname())
            with cctx.wrap_socket(raw, server_hostname="localhost") as c:
                c.sendall(payload)
                digest = c.recv(100).decode()
                c.sendall(b"bye")
                return c.version() is not None, digest, t.ticks - t0

        srv, cli = go(server), go(client)
        handshake, digest, ticks = cli.join()
        print("tls:", handshake, "digest ok:", digest == hashlib.sha256(payload).hexdigest(),
              "server got:", srv.join(), "ticks > 0:", t.stop() > 0)
        l.close()
    """)
    assert out == ["tls: True digest ok: True server got: b'bye' ticks > 0: True"]
