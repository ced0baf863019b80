"""A timing proxy for the Docker engine's unix socket: forwards bytes unchanged between a
client (attune-server with ATTUNE__DOCKER__HOST=unix://<socket>) and /var/run/docker.sock and
records, for every HTTP request, its method, path, the time its first byte arrived and the time
the engine's response began. Used by cold_breakdown.py to time each Docker call the controller
makes; it adds a small forwarding cost, so its numbers are not used for ratios.

The proxy relies on HTTP/1.1 without pipelining (hyper, which bollard uses, sends the next
request on a connection only after the previous response arrived).
"""
import asyncio
import os
import threading
import time


class DockerTimingProxy:
    def __init__(self, listen_path, engine_path=None):
        self.listen_path = listen_path
        host = os.environ.get("DOCKER_HOST", "")
        self.engine_path = engine_path or (
            host[len("unix://"):] if host.startswith("unix://") else "/var/run/docker.sock")
        self.calls = []  # dicts: method, path, sent (epoch s), answered (epoch s or None)
        self._lock = threading.Lock()
        self._loop = None
        self._server = None
        self._thread = None
        self._ready = threading.Event()
        # Strong references to the connection tasks (asyncio keeps only weak ones).
        self._connections = set()

    def start(self):
        self._thread = threading.Thread(target=self._run, name="docker-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise SystemExit("docker timing proxy did not start")
        return self

    def stop(self):
        if self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        if os.path.exists(self.listen_path):
            os.unlink(self.listen_path)

    def snapshot(self):
        with self._lock:
            return [dict(call) for call in self.calls]

    def _run(self):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        if os.path.exists(self.listen_path):
            os.unlink(self.listen_path)
        self._server = self._loop.run_until_complete(
            asyncio.start_unix_server(self._handle, path=self.listen_path))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _shutdown(self):
        """Closes the listener and ends every connection's forwarding task."""
        self._server.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _handle(self, client_reader, client_writer):
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            await self._forward(client_reader, client_writer)
        finally:
            self._connections.discard(task)

    async def _forward(self, client_reader, client_writer):
        try:
            engine_reader, engine_writer = await asyncio.open_unix_connection(self.engine_path)
        except OSError:
            client_writer.close()
            return
        # The call currently in flight on this connection, and whether its answer began.
        state = {"call": None, "answered": True}

        async def client_to_engine():
            try:
                while True:
                    data = await client_reader.read(65536)
                    if not data:
                        break
                    if state["answered"]:
                        line = data.split(b"\r\n", 1)[0].decode("latin-1")
                        parts = line.split(" ")
                        call = {
                            "method": parts[0] if parts else "?",
                            "path": parts[1] if len(parts) > 1 else "?",
                            "sent": time.time(),
                            "answered": None,
                        }
                        with self._lock:
                            self.calls.append(call)
                        state["call"] = call
                        state["answered"] = False
                    engine_writer.write(data)
                    await engine_writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    engine_writer.write_eof()
                except (OSError, RuntimeError):
                    pass

        async def engine_to_client():
            try:
                while True:
                    data = await engine_reader.read(65536)
                    if not data:
                        break
                    if not state["answered"] and state["call"] is not None:
                        with self._lock:
                            state["call"]["answered"] = time.time()
                        state["answered"] = True
                    client_writer.write(data)
                    await client_writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                client_writer.close()

        try:
            await asyncio.gather(client_to_engine(), engine_to_client())
        except asyncio.CancelledError:
            pass  # the proxy is stopping
        finally:
            engine_writer.close()
            client_writer.close()
