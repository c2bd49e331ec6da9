"""File digests that plugins mix into their identity (see ``Plugin.identity``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from stylebox.filecache import FileCache, file_key

#: Digests kept, the least recently asked for dropped first: a daemon's status page asks
#: for every photo it shows, and a long-running one sees unboundedly many.
KEPT = 1024

_digests: FileCache[str] = FileCache(entries=KEPT)


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, kept while its size and mtime stay the same (so a plugin
    can ask again at each reload without reading its model again), for the :data:`KEPT`
    files last asked for."""
    key = file_key(path)
    digest = _digests.get(key)
    if digest is None:
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        _digests.put(key, digest)
    return digest
