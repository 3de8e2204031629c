"""An exclusive lock on a file, released by the system when the process dies, however it dies."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Type


@contextlib.contextmanager
def file_lock(path: str, timeout: float, holder: str = "another process", error: Type[Exception] = TimeoutError):
    """Holds an exclusive lock on the file `path`, waiting at most `timeout` s.

    Raises:
        `error`: `holder` held the lock for `timeout` s (the message names the file).
    """
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(path, "a+") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise error(f"{holder} held {path} for {timeout:.0f} s; is a run stuck?") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
