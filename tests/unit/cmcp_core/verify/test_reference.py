"""Release matching: the launch values, and the image and launch-policy rules the initdata pins.

The launch-value comparisons run on real Intel and AMD evidence in ``test_tdx``/``test_snp``;
here the guest is the simulated one, so each initdata-side attack changes one thing a host
could change without touching the measured boot chain.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from cmcp_core import initdata, launch_policy
from cmcp_core.digest import jcs
from cmcp_core.errors import CmcpError, Code
from cmcp_core.evidence.simulated import SIMULATED_MRTD, SIMULATED_RTMRS
from cmcp_core.initdata import CmcpEntry
from cmcp_core.launch_policy import LaunchSpec
from cmcp_core.verify.reference import ReleaseReference, TdxLaunch, match_release
from cmcp_devkit.initdata import TEST_IMAGE
from cmcp_devkit.release import dev_release

GENUINE = TdxLaunch(mrtd=SIMULATED_MRTD, rtmrs=(*SIMULATED_RTMRS, bytes(48)), tee_tcb_svn=bytes(16),
                    td_attributes=bytes(8))
ENTRY = CmcpEntry("sha256:" + "ab" * 32, "sha256:" + "cd" * 32, "enforce", "team/route", "urn:up")
OTHER_IMAGE = "ghcr.io/attacker/enclave@sha256:" + "e" * 64


def _match(data: bytes, releases: tuple[ReleaseReference, ...] = (dev_release(),)) -> ReleaseReference:
    doc = initdata.parse(data)
    return match_release("simulated", GENUINE, doc, releases)


def _refused(data: bytes, code: Code = Code.REFERENCE_VALUE_MISMATCH) -> str:
    with pytest.raises(CmcpError) as err:
        _match(data)
    assert err.value.code is code
    return err.value.detail


def _with_policy(data: bytes, policy: str, *, keep_digest: bool = False) -> bytes:
    """The same initdata with another policy.rego (and, unless ``keep_digest``, a matching digest)."""
    doc = initdata.parse(data)
    entry = doc.cmcp
    if not keep_digest:
        entry = dataclasses.replace(entry, launch_policy_digest=launch_policy.digest(policy))
    text = data.decode()
    text = text.replace(doc.data["policy.rego"], policy)
    old_cmcp = doc.data["cmcp.json"]
    return text.replace(old_cmcp, jcs(entry.to_json()).decode()).encode()


def test_the_genuine_initdata_matches_the_dev_release() -> None:
    assert _match(initdata.render(ENTRY, image=TEST_IMAGE)).version == dev_release().version


def test_another_image_is_refused() -> None:
    assert "image" in _refused(initdata.render(ENTRY, image=OTHER_IMAGE))


def test_a_policy_with_other_rules_is_refused() -> None:
    """A host's own policy (here: exec allowed) under the genuine image and a consistent digest."""
    data = initdata.render(ENTRY, image=TEST_IMAGE)
    policy = initdata.parse(data).data["policy.rego"]
    loose = policy.replace("default ExecProcessRequest := false", "default ExecProcessRequest := true")
    assert loose != policy
    assert "rules" in _refused(_with_policy(data, loose))


def test_a_policy_whose_data_admits_another_image_is_refused() -> None:
    data = initdata.render(ENTRY, image=TEST_IMAGE)
    other = launch_policy.render(LaunchSpec(image=OTHER_IMAGE, args=("cmcp-enclave",), env=()))
    assert "admits another image" in _refused(_with_policy(data, other))


def test_a_policy_not_named_by_the_entry_is_refused() -> None:
    data = initdata.render(ENTRY, image=TEST_IMAGE)
    rules, expected = launch_policy.split(initdata.parse(data).data["policy.rego"])
    compact = json.dumps(expected, separators=(',', ':'))
    respaced = f"{rules}\nexpected := {compact}\n"  # the same data in other bytes
    assert "names another launch policy" in _refused(_with_policy(data, respaced, keep_digest=True))


def test_a_policy_with_rules_after_the_data_is_refused() -> None:
    data = initdata.render(ENTRY, image=TEST_IMAGE)
    policy = initdata.parse(data).data["policy.rego"] + "ExecProcessRequest := true\n"
    assert "not one cMCP renders" in _refused(_with_policy(data, policy))


def test_no_release_and_no_platform_values() -> None:
    data = initdata.render(ENTRY, image=TEST_IMAGE)
    with pytest.raises(CmcpError) as err:
        _match(data, releases=())
    assert err.value.code is Code.REFERENCE_VALUES_MISSING
    with pytest.raises(CmcpError) as err:
        _match(data, releases=(dataclasses.replace(dev_release(), simulated=None),))
    assert err.value.code is Code.REFERENCE_VALUE_MISMATCH and "simulated" in err.value.detail


def test_any_matching_release_of_several_is_enough() -> None:
    data = initdata.render(ENTRY, image=TEST_IMAGE)
    other = dataclasses.replace(dev_release(OTHER_IMAGE), version="other")
    assert _match(data, releases=(other, dev_release())).version == dev_release().version
    with pytest.raises(CmcpError):
        _match(data, releases=(other,))
