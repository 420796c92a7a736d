"""Read ahead of the consumer in a background thread, within a bound.

The extractor waits on the network while the loader waits on the database;
overlapping the two is where most of a full sync's time goes. At most
``depth`` items are held, so memory stays bounded whatever the listing size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar

T = TypeVar("T")

_POLL_SECONDS = 0.1


class _Done:
    """Marks the end of the producer's items."""


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(source: Iterable[T], *, depth: int) -> Generator[T, None, None]:
    """Yield the items of ``source``, produced up to ``depth`` ahead.

    An exception raised by ``source`` is raised here, at the position it
    occurred. Closing the generator early stops the producer after its
    current item.
    """
    slots: queue.Queue[T | _Done | _Failed] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    producer = threading.Thread(
        target=_produce, args=(source, slots, stop), name="prefetch", daemon=True
    )
    producer.start()
    try:
        while True:
            item = slots.get()
            if isinstance(item, _Done):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        producer.join()


def _produce(
    source: Iterable[T], slots: queue.Queue[T | _Done | _Failed], stop: threading.Event
) -> None:
    end: _Done | _Failed = _Done()
    try:
        for item in source:
            if not _put(slots, item, stop):
                return
    except BaseException as error:  # handed over to the consumer's thread
        end = _Failed(error)
    _put(slots, end, stop)


def _put(
    slots: queue.Queue[T | _Done | _Failed],
    item: T | _Done | _Failed,
    stop: threading.Event,
) -> bool:
    while not stop.is_set():
        try:
            slots.put(item, timeout=_POLL_SECONDS)
        except queue.Full:
            continue
        return True
    return False
