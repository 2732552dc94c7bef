"""Several processes, one job, on MPI (mpi4py, an optional extra: `pip install "pytransformer[mpi]"` brings mpi4py
and a pip-installed Open MPI, so `mpiexec` works without a system MPI; a system MPI works too).

    mpiexec -n 2 pytransformer train --batch 32 ...      # data-parallel: 16 rows of every global batch per rank
    mpiexec -n 4 pytransformer embed --file lines.txt --out emb.npy   # the lines shared out, gathered in order

One process per socket or machine, OpenMP threads inside each. `world()` is this process's view: rank and size
(rank 0 of 1 when not launched by mpiexec; importing pytransformer never imports mpi4py). Data-parallel training
(train.py) gives every rank the same model and optimizer state; each takes its rows of every global batch, and the
flat gradient buffer is averaged across ranks in buckets, each started (non-blocking) as soon as backward has
finished the layers it holds, so the reduction of the last layers overlaps the backward of the first ones. Clipping
and AdamW then run identically everywhere; rank 0 logs and writes checkpoints. An error on any rank ends the whole
job (MPI_Abort) instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

import os
import sys

import numpy as np

_LAUNCH_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD")


class World:
    """This process's place in the job: rank, size, and the few collectives pytransformer needs."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n items (the first n % size ranks take one more)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def mean(self, value: float) -> float:
        """The average of a number over ranks."""
        if self.size == 1:
            return float(value)
        from mpi4py import MPI

        return self.comm.allreduce(float(value), op=MPI.SUM) / self.size

    def start_sum(self, view: np.ndarray):
        """Start summing a C-contiguous float32 array across ranks in place (non-blocking) -> a request."""
        from mpi4py import MPI

        return self.comm.Iallreduce(MPI.IN_PLACE, view, op=MPI.SUM)

    def wait(self, requests) -> None:
        if requests:
            from mpi4py import MPI

            MPI.Request.Waitall(requests)

    def gather_rows(self, local: np.ndarray) -> np.ndarray | None:
        """Every rank's rows (n_r, ...) stacked in rank order on rank 0 (None elsewhere)."""
        if self.size == 1:
            return local
        local = np.ascontiguousarray(local)
        counts = self.comm.gather(local.shape[0], root=0)
        width = int(np.prod(local.shape[1:], dtype=np.int64))
        out = None
        if self.is_root:
            out = np.empty((sum(counts),) + local.shape[1:], local.dtype)
            self.comm.Gatherv(local.reshape(-1), [out.reshape(-1), [c * width for c in counts]], root=0)
        else:
            self.comm.Gatherv(local.reshape(-1), None, root=0)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (a failing rank must not leave the others waiting in a collective)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.size > 1:
            self.comm.Abort(code)


_world = None


def launched_by_mpi() -> bool:
    return any(v in os.environ for v in _LAUNCH_VARIABLES)


def world() -> World:
    """This process's World: from MPI when launched by mpiexec (mpi4py needed), else rank 0 of 1."""
    global _world
    if _world is None:
        if launched_by_mpi():
            try:
                from mpi4py import MPI
            except ImportError:
                raise RuntimeError("launched by mpiexec, but mpi4py is not installed: pip install "
                                   "\"pytransformer[mpi]\"") from None
            _world = World(MPI.COMM_WORLD)
        else:
            _world = World()
    return _world


class GradientSync:
    """Averages a model's flat gradient buffer across ranks in buckets: one per block (its matrices and its vectors,
    two ranges of the buffer), started as soon as the model's backward has finished that block (Model.on_block_done)
    and the rest (embeddings, final norm) after backward; finish() waits and divides by the rank count."""

    def __init__(self, model, world: World):
        self.model, self.world = model, world
        params = model.params
        grad = params.grad
        self.block_ranges = {}
        covered = np.zeros(grad.size, bool)
        for i in range(len(model.blocks)):
            prefix = f"blocks.{i}."
            spans = sorted(params.offsets[n] for n, _ in params if n.startswith(prefix))
            ranges = []
            for off, size in spans:  # merge adjacent parameters into ranges
                if ranges and ranges[-1][1] == off:
                    ranges[-1][1] = off + size
                else:
                    ranges.append([off, off + size])
            self.block_ranges[i] = [(a, b) for a, b in ranges]
            for a, b in ranges:
                covered[a:b] = True
        rest, start = [], None
        for j, c in enumerate(np.append(covered, True)):
            if not c and start is None:
                start = j
            elif c and start is not None:
                rest.append((start, j))
                start = None
        self.rest = rest
        self.requests = []
        self.active = False
        self.wait_seconds = 0.0  # time spent waiting for the reductions after backward (not hidden by it)

    def __enter__(self):
        """Synchronise during the next backward (the last micro-batch of a step)."""
        self.active = True
        self.requests = []
        self.model.on_block_done = self._block_done
        return self

    def _block_done(self, i):
        grad = self.model.params.grad
        self.requests += [self.world.start_sum(grad[a:b]) for a, b in self.block_ranges.get(i, ())]

    def __exit__(self, *exc):
        self.model.on_block_done = None
        if exc[0] is None:
            self.finish()

    def finish(self):
        import time

        grad = self.model.params.grad
        self.requests += [self.world.start_sum(grad[a:b]) for a, b in self.rest]
        t = time.perf_counter()
        self.world.wait(self.requests)
        self.wait_seconds += time.perf_counter() - t
        self.requests = []
        grad *= np.float32(1.0 / self.world.size)
