#!/usr/bin/env python3
"""nbpool-healthcheck URL [TIMEOUT]: exit 0 when URL answers 2xx, 1 otherwise.

For container health checks: the image has no curl or wget, but it has Python.
"""

import sys
import urllib.error
import urllib.request


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print("usage: nbpool-healthcheck URL [TIMEOUT]", file=sys.stderr)
        return 2
    timeout = float(sys.argv[2]) if len(sys.argv) == 3 else 3.0
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=timeout) as resp:
            return 0 if 200 <= resp.status < 300 else 1
    except (urllib.error.URLError, OSError, ValueError) as err:
        print(f"{sys.argv[1]}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
