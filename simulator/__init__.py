"""A local vendor with fault injection (``taskhook simulator``).

It speaks Replicate's predictions API (``/v1``, Standard Webhooks), fal's queue API (``/fal``,
ED25519 webhooks with a JWKS) and midjourney-proxy's (``/mj``, unsigned notifyHook), each as a
dialect over one job lifecycle, so every real adapter can be exercised end to end — including
against dropped, duplicated, delayed, reordered, forged and early callbacks, 5xx/429 answers
and failed jobs — without the real vendor.
"""

from __future__ import annotations

from simulator.app import create_app
from simulator.config import SimulatorConfig
from simulator.server import RunningSimulator, running_simulator, serve

__all__ = ["RunningSimulator", "SimulatorConfig", "create_app", "running_simulator", "serve"]
