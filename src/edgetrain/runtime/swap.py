"""Swapping activations to storage: the swap file and the four steps the planner inserts.

For an activation that forward makes and backward reads much later (``plan/swap.py`` picks
them), the step list gets:

* ``SwapOut`` right after its last forward reader: a background thread starts writing its bytes
  to the swap file;
* ``SwapFree`` a few steps later (the look-ahead): waits for that write; it is the activation's
  last reader, so its arena bytes are free for others from there;
* ``SwapIn`` a few steps before its first backward reader: the thread starts reading the bytes
  back into a new arena place (the value ``name::swapped``, which backward reads instead);
* ``SwapReady`` right before that reader: waits for the read.

The same bytes come back, so results are bit-identical. The file is created unnamed (O_TMPFILE,
else unlinked at once), so it disappears when the process ends, whatever the way; its blocks
are reserved when the plan is bound (``posix_fallocate``), so a full disk or an unwritable
directory is an error before the step runs, not in the middle of it. Data in the page cache has
not left memory (and a cgroup counts it): the file is opened with ``O_DIRECT`` and the bytes go
through a 1 MiB page-aligned staging buffer, bypassing the cache; where the file system has no
``O_DIRECT`` (tmpfs: memory anyway), writes are followed by ``POSIX_FADV_DONTNEED``.
"""
from __future__ import annotations

import mmap
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..errors import EdgetrainError
from ..ops.registry import ET_DOMAIN, OpContext, TensorType, planned, register

PAGE = 4096
BOUNCE = 1 << 20  # bytes staged per O_DIRECT transfer


class SwapError(EdgetrainError):
    """The swap location cannot hold the step's swapped tensors, or a transfer failed."""


def _staged(n: int):
    """(start, bytes, bytes rounded up to a page) of each staged piece of an n-byte transfer
    (a slot is page-rounded, so the rounded tail fits in it)."""
    for lo in range(0, n, BOUNCE):
        k = min(BOUNCE, n - lo)
        yield lo, k, -(-k // PAGE) * PAGE


class SwapFile:
    """Slots of a swap file, and a background thread that moves bytes in and out of them."""

    def __init__(self, directory: str | None = None):
        self.directory = directory
        self.slots: list[tuple[int, int]] = []  # (offset, bytes)
        self.size = 0
        self._fd: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future] = {}
        self.written = self.read_back = 0  # bytes, for reports and tests
        self.direct = False  # O_DIRECT: transfers through a small page-aligned buffer
        self._bounce: mmap.mmap | None = None

    def add(self, nbytes: int) -> int:
        self.slots.append((self.size, int(nbytes)))
        self.size += -(-int(nbytes) // PAGE) * PAGE
        return len(self.slots) - 1

    def open(self) -> None:
        """Create the file and reserve its blocks (before the first step that uses it)."""
        if self._fd is not None or not self.slots:
            return
        where = self.directory or tempfile.gettempdir()
        try:
            fd = None
            for flags in (os.O_DIRECT, 0):  # O_DIRECT: the bytes bypass the page cache
                try:
                    fd = os.open(where, os.O_TMPFILE | os.O_RDWR | flags, 0o600)
                    self.direct = bool(flags)
                    break
                except (AttributeError, OSError) as e:
                    if isinstance(e, OSError) and e.errno not in (95, 21, 22):  # unsupported
                        raise
            if fd is None:
                f = tempfile.TemporaryFile(dir=where)
                fd = os.dup(f.fileno())
                f.close()
            try:
                os.posix_fallocate(fd, 0, self.size)
            except OSError:
                os.close(fd)
                raise
        except OSError as e:
            raise SwapError(f"cannot swap to {where!r} ({self.size / 2 ** 20:.1f} MiB needed): "
                            f"{e.strerror or e}; give a writable directory with room "
                            "(Module(swap_dir=...)) or a larger memory budget") from e
        self._fd = fd
        if self.direct:  # page-aligned staging for O_DIRECT transfers (the thread's alone)
            self._bounce = mmap.mmap(-1, BOUNCE)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="edgetrain-swap")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._pool = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass

    def _write(self, slot: int, data: np.ndarray) -> None:
        off, n = self.slots[slot]
        view = memoryview(data.reshape(-1).view(np.uint8))
        if self.direct:
            stage = memoryview(self._bounce)
            for lo, k, padded in _staged(n):
                stage[:k] = view[lo:lo + k]
                if os.pwrite(self._fd, stage[:padded], off + lo) != padded:
                    raise OSError(5, "short write to the swap file")
            self.written += n
            return
        done = 0
        while done < n:
            done += os.pwrite(self._fd, view[done:], off + done)
        # starts writing the pages back now (not in 30 s) and drops those already clean; the
        # read-back drops the rest. No fdatasync: it waits on the disk's journal, ~0.5 s a call
        os.posix_fadvise(self._fd, off, n, os.POSIX_FADV_DONTNEED)
        self.written += n

    def _read(self, slot: int, out: np.ndarray) -> None:
        off, n = self.slots[slot]
        view = memoryview(out.reshape(-1).view(np.uint8))
        if self.direct:
            stage = memoryview(self._bounce)
            for lo, k, padded in _staged(n):
                if os.preadv(self._fd, [stage[:padded]], off + lo) < k:
                    raise SwapError(f"swap file ended early reading slot {slot}")
                view[lo:lo + k] = stage[:k]
            self.read_back += n
            return
        done = 0
        while done < n:
            got = os.preadv(self._fd, [view[done:]], off + done)
            if got == 0:
                raise SwapError(f"swap file ended early reading slot {slot}")
            done += got
        os.posix_fadvise(self._fd, off, n, os.POSIX_FADV_DONTNEED)
        self.read_back += n

    def start_write(self, slot: int, data: np.ndarray) -> None:
        self._pending[slot] = self._pool.submit(self._write, slot, data)

    def start_read(self, slot: int, out: np.ndarray) -> None:
        self._pending[slot] = self._pool.submit(self._read, slot, out)

    def wait(self, slot: int) -> None:
        future = self._pending.pop(slot, None)
        if future is None:
            return
        try:
            future.result()
        except OSError as e:
            raise SwapError(f"swap transfer of slot {slot} failed: {e.strerror or e}") from e


def _none(ctx: OpContext, *types) -> list[TensorType]:
    return []


@register("SwapOut", versions=(1,), infer=_none, domain=ET_DOMAIN, foldable=False)
def swap_out(ctx: OpContext, x: np.ndarray):
    ctx.attrs["swap"].start_write(ctx.attrs["slot"], np.ascontiguousarray(x))
    return ()


@register("SwapFree", versions=(1,), infer=_none, domain=ET_DOMAIN, foldable=False)
def swap_free(ctx: OpContext, x: np.ndarray):
    ctx.attrs["swap"].wait(ctx.attrs["slot"])
    return ()


@register("SwapIn", versions=(1,), infer=lambda ctx: [ctx.attrs["type"]], domain=ET_DOMAIN,
          foldable=False)
def swap_in(ctx: OpContext):
    t = ctx.attrs["type"]
    out = planned(ctx)
    if out is None:  # not in an arena (a plan that swaps is always bound): a buffer of its own
        out = np.empty(t.shape, t.dtype)
    ctx.attrs["swap"].start_read(ctx.attrs["slot"], out)
    return out


@register("SwapReady", versions=(1,), infer=_none, domain=ET_DOMAIN, foldable=False)
def swap_ready(ctx: OpContext, x: np.ndarray):
    ctx.attrs["swap"].wait(ctx.attrs["slot"])
    return ()
