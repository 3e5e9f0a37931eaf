"""A network hop the test can cut: a TCP relay on a free loopback port to a real server.

``cut()`` turns it into a black hole, as a failed switch or a pulled cable does: nothing is
closed, every byte in either direction goes nowhere, new connections are taken and heard
from no more. ``mend()`` forgets the connections held across the cut (as a firewall or
NAT that lost its state: their next packet meets a reset) and relays again.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.brokers import free_port

__all__ = ["NetCut"]


class NetCut:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.broken = threading.Event()
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self.broken.set()

    def mend(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for sock in held:  # their ends hear that they are gone (the relays close them)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.broken.clear()

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self.mend()

    def _accept(self) -> None:
        while not self._closed:
            try:
                near, _ = self._server.accept()
                far = socket.create_connection(self.target)
            except OSError:
                continue
            with self._lock:
                self._held += [near, far]
            ends = [2]  # both relays of the pair done: only then are the sockets closed
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._relay, args=(a, b, ends), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket, ends: list[int]) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self.broken.is_set():  # cut: the bytes go nowhere
                    sink.sendall(data)
        for sock in (source, sink):  # wakes the other relay; its fds stay ours until then
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            ends[0] -= 1
            last = ends[0] == 0
            if last:
                self._held = [h for h in self._held if h not in (source, sink)]
        if last:  # closed once nobody reads them: a closed fd number is soon another's
            source.close()
            sink.close()
