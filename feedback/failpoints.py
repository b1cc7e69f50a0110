"""Failpoints: with `SUPPORTLOOP_FAILPOINT=NAME` in its environment, a process kills itself with SIGKILL
when it reaches the point called NAME, which is how the crash-safety tests crash a training round at an
exact place (the technique of etcd's gofail and TiKV's fail-rs). Unset, as in production, a point costs
one environment lookup. The points: `phase:<name>` as a round enters a phase (snapshot, anchors,
`train <method>`, gate, publish, done), and `publish:folder` once the adapter's folder is in the
registry but before its row is in the store."""

from __future__ import annotations

import os
import signal

ENV = "SUPPORTLOOP_FAILPOINT"


def failpoint(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
