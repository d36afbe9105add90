"""Install the browser client from the npm registry without Node.js (image builds).

    python -m demo.fetch_client [--lock demo/js/package-lock.json] [--dest DIR]

Reads the ``socket.io-client`` entry of the lock file (version and
``sha512`` integrity), downloads that tarball from the registry (``$NPM_CONFIG_REGISTRY``,
else npm's default), refuses it unless the hash matches, and writes its
``dist/socket.io.min.js`` where ``npm ci`` would have put it
(:data:`demo.client.CLIENT_JS`). The bundle is self-contained, so its own
dependencies are not needed in the browser. The Dockerfile runs this in a
build stage, so the image carries the exact locked file and no Node.js.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

PACKAGE = "socket.io-client"
MEMBER = "package/dist/socket.io.min.js"
DEFAULT_REGISTRY = "https://registry.npmjs.org"


class FetchError(RuntimeError):
    """The lock file, the download or its integrity check failed."""


def locked(lock_path: Path) -> tuple[str, str]:
    """The locked ``(version, integrity)`` of socket.io-client."""
    try:
        packages = json.loads(lock_path.read_text())["packages"]
        entry = packages[f"node_modules/{PACKAGE}"]
        return entry["version"], entry["integrity"]
    except (OSError, ValueError, KeyError) as exc:
        raise FetchError(f"{lock_path}: no locked {PACKAGE} ({exc}); run npm install there") \
            from None


def verify(data: bytes, integrity: str) -> None:
    """Raise unless ``data`` matches the lock's ``sha512-<base64>`` integrity."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise FetchError(f"unsupported integrity {algorithm!r} in the lock file (want sha512)")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != expected:
        raise FetchError(f"{PACKAGE} tarball integrity mismatch: got sha512-{actual}, "
                         f"the lock says {integrity}")


def fetch(lock_path: Path, dest: Path, registry: str) -> Path:
    version, integrity = locked(lock_path)
    url = f"{registry.rstrip('/')}/{PACKAGE}/-/{PACKAGE}-{version}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except OSError as exc:
        raise FetchError(f"cannot download {url}: {exc}") from None
    verify(data, integrity)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        member = archive.extractfile(MEMBER)
        if member is None:
            raise FetchError(f"{url} has no {MEMBER}")
        script = member.read()
    target = dest / "node_modules" / PACKAGE / "dist" / "socket.io.min.js"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(script)
    return target


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent / "js"
    parser = argparse.ArgumentParser(prog="python -m demo.fetch_client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lock", type=Path, default=here / "package-lock.json")
    parser.add_argument("--dest", type=Path, default=here,
                        help="the folder that gets node_modules/ (default: demo/js)")
    args = parser.parse_args(argv)
    registry = os.environ.get("NPM_CONFIG_REGISTRY") or DEFAULT_REGISTRY
    try:
        target = fetch(args.lock, args.dest, registry)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{PACKAGE} {locked(args.lock)[0]} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
