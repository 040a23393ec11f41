"""How long runs report progress: a callback the engine calls between units of work."""

from __future__ import annotations

from typing import Callable

# (done, total, message): `total` is 0 while it is not known yet. A callback may raise to cancel the run.
Progress = Callable[[int, int, str], None]
