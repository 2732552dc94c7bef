"""In-process stand-ins for what the server's event loop gives the engine, a recorder of its steps' sizes, and an
application served over loopback from a thread."""

from __future__ import annotations

import contextlib
import threading
import time


class Loop:
    """An in-process job's event loop: items go straight to their queue."""

    def call_soon_threadsafe(self, f, item):
        f(item)


class Out:
    """An in-process job's queue: the items, and an event set at the end."""

    def __init__(self):
        self.items, self.done = [], threading.Event()

    def put_nowait(self, item):
        self.items.append(item)
        if item[0] in ("done", "error"):
            self.done.set()


def record_steps(model) -> list:
    """The row count of every decode_batch call the model takes from now on (wrapped in place)."""
    sizes, step = [], model.decode_batch

    def recorded(ids, *args, **kw):
        sizes.append(len(ids))
        return step(ids, *args, **kw)

    model.decode_batch = recorded
    return sizes


@contextlib.contextmanager
def loopback(app, timeout_keep_alive=5.0):
    """The application on uvicorn over a loopback port, in a thread -> ("127.0.0.1", port); its engine closed after."""
    import uvicorn

    from pytransformer.serve import server as http_server

    sock = http_server.listen("127.0.0.1", 0)
    runner = uvicorn.Server(http_server.config(app, timeout_keep_alive=timeout_keep_alive))
    thread = threading.Thread(target=runner.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(100):
        if runner.started:
            break
        time.sleep(0.05)
    try:
        yield "127.0.0.1", sock.getsockname()[1]
    finally:
        runner.should_exit = True
        thread.join(10)
        app.state.engine.close()
