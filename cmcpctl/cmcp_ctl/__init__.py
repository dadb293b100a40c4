"""``cmcpctl``: the command line for bundles, audit exports, verification, demo and conformance."""
