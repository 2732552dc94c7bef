"""In-process stand-ins for what the server's event loop gives the engine, and a recorder of its steps' sizes."""

from __future__ import annotations

import threading


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
