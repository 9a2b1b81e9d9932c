"""`ray start ...`, keeping a one-machine test cluster on 127.0.0.1.

Ray replaces a loopback --node-ip-address or --address with the machine's routable IP (so that other
machines could join); the test network is loopback only, so that address is not listened on or not
allowed. The head could be pinned with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, but that switch also refuses
to start a second node, which is what these tests need: so this wrapper turns the rewrite off, then runs
Ray's own command line unchanged.

    python tests/ray_node.py start --head --port 6390 --node-ip-address 127.0.0.1 ...
    python tests/ray_node.py start --address 127.0.0.1:6390 --node-ip-address 127.0.0.1 ...
"""

from __future__ import annotations

import sys

from ray._private import services


def _keep(host: str) -> str:
    return host


if __name__ == "__main__":
    services.resolve_ip_for_localhost = _keep
    from ray.scripts.scripts import main

    sys.exit(main())
