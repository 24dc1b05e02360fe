"""Runs that a scheduler stops and starts again: a SIGTERM (preemption, or torchrun stopping
the survivors of a failed worker) turned into a stop at the next batch boundary that every
rank agrees on, what follows a lost rank, and the two ways a run ends early on purpose:
:class:`RunStopped` (exit 143) and :class:`PeerLost` (exit 4). Which attempt of a torchrun
job this is comes from :mod:`fastadv._outdir`, which evaluation shares.

torchrun's agent restarts every worker with the same command line when one fails
(``--max-restarts``); each restart sees ``TORCHELASTIC_RESTART_COUNT > 0`` in at least one
rank (an agent restarting for another node's failure keeps its own count), and the run
directory then resumes the run by itself (:meth:`~fastadv.train.rundir.RunDir.claim`)."""

from __future__ import annotations

import os
import signal
import threading

import torch
import torch.distributed as dist

from .._outdir import max_restarts, restart_count, under_torchelastic

# A worker that ends on purpose exits non-zero, or torchrun would count the group as
# finished: 128 + SIGTERM, as if the signal had ended it; and 4 for a lost peer.
STOPPED_EXIT, PEER_LOST_EXIT = 128 + signal.SIGTERM, 4


class RunStopped(Exception):
    """The run stopped at a batch boundary on SIGTERM, with its last.pt written there."""


class PeerLost(Exception):
    """Another rank of the process group died or stopped answering; the message is the one
    line every survivor prints (who was lost, and what happens next)."""


def next_step() -> str:
    """What follows a rank's failure, as far as this machine's torchrun agent knows (on
    several machines, the agent whose worker failed counts the restart)."""
    count, most = restart_count(), max_restarts()
    if under_torchelastic() and count < most:
        return (f"torchrun restarts the workers (this machine's restart {count + 1} of "
                f"{most}) and the run resumes by itself")
    if under_torchelastic():
        return ("no torchrun restarts left here: the job ends; run the same command with "
                "--resume auto to continue")
    return "run the same command with --resume auto to continue"


class StopSignal:
    """SIGTERM sets :attr:`requested` instead of ending the process, so the loop can write
    last.pt at the next batch boundary (torchrun and Slurm send SIGKILL 30 s later). Installed
    only from the main thread, and the previous handler is put back on exit: ``fastadv.fit``
    is a library call in someone else's process. With ``pass_on``, a SIGTERM the run did not
    stop for (it came during the final report) is delivered again once the previous handler
    is back, so the caller's process still gets it."""

    def __init__(self, pass_on: bool = True):
        self.requested, self.pass_on = False, pass_on
        self.stopped = False  # the run stopped for it (RunStopped): nothing to pass on
        self._installed, self._previous = False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._installed:
            # None: the previous handler was not installed from Python; the default stands in.
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None
                          else self._previous)
            if self.requested and not self.stopped and self.pass_on:
                os.kill(os.getpid(), signal.SIGTERM)
        return False


class StopVote:
    """Every rank stops at the same batch boundary once any rank got SIGTERM. The vote is a
    MAX all-reduce of each rank's flag, issued at one boundary and read at the next, so a
    stop lands one batch after the signal and no rank waits on it (on a GPU, the CPU runs at
    most one batch ahead of the device). It goes over the run's own process group, in the
    same order on every rank as the group's other collectives; :meth:`settle` waits for the
    outstanding one, at an epoch's end."""

    def __init__(self, signal_: StopSignal, distributed: bool, device: torch.device):
        self._signal, self._distributed = signal_, distributed
        self._flag = torch.zeros(1, dtype=torch.int32, device=device)
        self._work = None

    def poll(self) -> bool:
        """At a batch boundary: whether every rank stops here (the previous vote's result),
        after casting this boundary's vote."""
        stop = self._wait()
        if not stop and self._distributed:
            self._flag.fill_(int(self._signal.requested))
            self._work = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, async_op=True)
        return stop

    def settle(self) -> bool:
        """At an epoch's end, once its last.pt is written: whether any rank got SIGTERM by
        now (the outstanding vote, then one more, waited for)."""
        stop = self._wait()
        if not stop and self._distributed:
            self._flag.fill_(int(self._signal.requested))
            dist.all_reduce(self._flag, op=dist.ReduceOp.MAX)
            stop = bool(self._flag.item())
        return stop

    def _wait(self) -> bool:
        if not self._distributed:
            return self._signal.requested
        if self._work is None:
            return False
        work, self._work = self._work, None
        work.wait()
        return bool(self._flag.item())
