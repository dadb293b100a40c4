"""Developer kit: launch cMCP's processes locally, test upstreams and the local Kubernetes cluster.

Used by tests, benchmarks, the demo, the conformance launcher and ``cmcpctl dev``; never by the
four product components.
"""
