"""Vendor settings that point taskhook at a running simulator (`taskhook demo`, the acceptance
tests): every vendor on its own path, with the credentials the simulator checks. Here rather
than in simulator/, which imports nothing of the product."""

from __future__ import annotations

from typing import Any

from simulator import RunningSimulator
from vendors.fal import FalSettings
from vendors.midjourney_proxy import MidjourneySettings
from vendors.replicate import ReplicateSettings


def simulated_vendors(sim: RunningSimulator) -> dict[str, Any]:
    """Settings.vendor_settings for the simulator at `sim.url`."""
    config = sim.simulator.config
    return {
        "replicate": ReplicateSettings(
            api_token=config.api_token or "token",
            api_base=f"{sim.url}/v1",
            webhook_secrets=(config.webhook_secret,),
        ),
        "fal": FalSettings(
            api_key=config.fal_key or "fal-key",
            queue_base=f"{sim.url}/fal",
            jwks_url=f"{sim.url}/fal/.well-known/jwks.json",
            api_base=f"{sim.url}/fal-api/v1",
        ),
        "midjourney": MidjourneySettings(api_base=sim.url, api_secret=config.mj_secret),
    }
