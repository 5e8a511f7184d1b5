"""Give memory freed after bulk work back to the operating system.

A start-up listing of 10,000 requests or a burst of approvals allocates a great deal briefly;
CPython frees it, but glibc keeps the freed pages in its heap, so the resident size stays at the
high-water mark. Asking glibc to trim after each quiet interval returns them (measured in
docs/performance.md). Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


def _trimmer() -> Callable[[], None] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


async def trim_forever(interval: float) -> None:
    """Every ``interval`` seconds: collect garbage, then return free heap pages to the OS."""
    trim = _trimmer()
    if trim is None:
        logger.info("no malloc_trim here (not glibc): freed memory stays with the process")
        return
    while True:
        await asyncio.sleep(interval)
        gc.collect()
        trim()
