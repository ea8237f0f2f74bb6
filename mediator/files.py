"""Writing a state file whole or not at all: a job's or a user list's JSON, read by other processes."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def write_json(path: Path, doc: Any, *, mode: int = 0o666, **dumps: Any) -> None:
    """Write ``doc`` as JSON to ``path`` through a file beside it renamed over it: a reader, another
    replica sharing the directory or a restart after a crash sees the old file or the new one, never half
    of one. ``mode``: permissions of the new file (less what the umask removes); ``dumps``: for
    :func:`json.dumps`."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # its own: writers never share one
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, **dumps))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
