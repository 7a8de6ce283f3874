"""A local Replicate look-alike with fault injection (``taskhook simulator``).

It speaks Replicate's predictions API and sends Standard Webhooks signed exactly as Replicate
does, so the real Replicate adapter can be exercised end to end — including against dropped,
duplicated, delayed, reordered, forged and early callbacks, 5xx/429 answers and failed jobs —
without the real vendor.
"""

from __future__ import annotations

from vendors.simulator.app import create_app
from vendors.simulator.config import SimulatorConfig
from vendors.simulator.server import RunningSimulator, running_simulator, serve

__all__ = ["RunningSimulator", "SimulatorConfig", "create_app", "running_simulator", "serve"]
