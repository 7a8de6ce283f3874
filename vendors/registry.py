"""The vendors this build knows: adding one is its module in vendors/ and a line here.

Each module exports a `VENDOR` (vendors/base.py's VendorPlugin): its name, its settings, the
headers to keep with its webhooks and how to build its adapter. Their order is the order of
preference among configured vendors (the first is the default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from common.settings import Settings
from vendors import fal, midjourney_proxy, replicate
from vendors.base import VendorAdapter, VendorPlugin

VENDORS: tuple[VendorPlugin[Any], ...] = (replicate.VENDOR, fal.VENDOR, midjourney_proxy.VENDOR)

BY_NAME: Mapping[str, VendorPlugin[Any]] = {vendor.name: vendor for vendor in VENDORS}


def read_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings.from_env with every registered vendor's settings."""
    return Settings.from_env(environ, vendors=VENDORS)


def build_adapters(settings: Settings, http: httpx.AsyncClient) -> dict[str, VendorAdapter]:
    """An adapter for each configured vendor, in order of preference."""
    return {
        name: BY_NAME[name].build(config, http, settings)
        for name, config in settings.vendor_settings.items()
    }


def kept_headers() -> tuple[str, ...]:
    """Every registered vendor's webhook headers worth keeping with a delivery."""
    return tuple(dict.fromkeys(h for vendor in VENDORS for h in vendor.headers))


def configured_account(settings: Settings, vendor: str) -> str | None:
    """The account a vendor's signed webhooks must come from, when the settings name it."""
    config = settings.vendor(vendor)
    plugin = BY_NAME.get(vendor)
    return None if config is None or plugin is None else plugin.account(config)
