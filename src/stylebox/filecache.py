"""What was made from a file, kept while the file stays the same."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

V = TypeVar("V")

#: A file's identity: its absolute path, size and modification time (a file replaced or
#: written again is another one).
FileKey = tuple[str, int, int]


def file_key(path: Path) -> FileKey:
    """``path``'s identity now; an ``OSError`` if it cannot be looked at."""
    info = path.stat()
    return (str(path.absolute()), info.st_size, info.st_mtime_ns)


class FileCache(Generic[V]):
    """Values by file identity, the least recently asked for dropped first once there are
    more than ``entries``, or their ``weigh``ed sizes add up to more than ``budget`` (the
    newest is always kept). Safe to share between threads."""

    def __init__(
        self,
        entries: int | None = None,
        budget: int | None = None,
        weigh: Callable[[V], int] = lambda _: 0,
    ) -> None:
        self.entries, self.budget, self._weigh = entries, budget, weigh
        self._values: OrderedDict[FileKey, V] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()

    def get(self, key: FileKey) -> V | None:
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
            return value

    def put(self, key: FileKey, value: V) -> None:
        with self._lock:
            if key in self._values:
                self._weight -= self._weigh(self._values.pop(key))
            self._values[key] = value
            self._weight += self._weigh(value)
            while len(self._values) > 1 and self._over():
                self._weight -= self._weigh(self._values.popitem(last=False)[1])

    def kept(self) -> list[FileKey]:
        """The keys held, the least recently asked for first."""
        with self._lock:
            return list(self._values)

    def _over(self) -> bool:
        too_many = self.entries is not None and len(self._values) > self.entries
        return too_many or (self.budget is not None and self._weight > self.budget)
