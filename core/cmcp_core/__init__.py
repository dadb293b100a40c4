"""Shared code for every cMCP component: bundles, digests, keys, evidence, permits, records.

Nothing in here holds policy decisions; it is the vocabulary the enclave, gateway, guard,
operator and verifier agree on, kept in one place so their formats cannot drift apart.
"""
