"""`python -m taskhook.healthcheck [URL]`: exit 0 when URL answers 200 within a few seconds.

The container image's HEALTHCHECK (a slim image has no curl). The default URL is this host's
web port (`PORT`, else 8000) at /healthz; worker and reconciler containers pass their metrics
listener's /healthz instead. It imports nothing of the app: a health probe must stay cheap.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else f"http://127.0.0.1:{os.environ.get('PORT') or '8000'}/healthz"
    if not url.startswith(("http://", "https://")):
        print(f"healthcheck: {url!r} is not an http(s) URL", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - http(s) only
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
