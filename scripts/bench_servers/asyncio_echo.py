"""Idiomatic asyncio echo servers: streams or a Protocol, on asyncio's own
event loop or on uvloop's.

    python asyncio_echo.py (streams|protocol) (asyncio|uvloop) HOST PORT
"""
import asyncio
import socket
import sys


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def handle_stream(reader, writer):
    writer.get_extra_info("socket").setsockopt(
        socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(kind, host, port):
    loop = asyncio.get_running_loop()
    if kind == "streams":
        server = await asyncio.start_server(handle_stream, host, port, backlog=4096)
    else:
        server = await loop.create_server(EchoProtocol, host, port, backlog=4096)
    print(f"listening on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main():
    kind, flavour, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if kind not in ("streams", "protocol") or flavour not in ("asyncio", "uvloop"):
        sys.exit(__doc__)
    factory = None
    if flavour == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(kind, host, port))


if __name__ == "__main__":
    main()
