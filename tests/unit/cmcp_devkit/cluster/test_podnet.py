"""cmcp_devkit.cluster.podnet: the pod network's addressing (the namespace itself is e2e's)."""

from __future__ import annotations

import ipaddress
import os

import pytest

from cmcp_devkit.cluster.podnet import PodNetwork, PodNetworkError


def test_loopback_mode_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CMCP_E2E_POD_NETWORK", raising=False)
    net = PodNetwork.create("loopback")
    idx = net.index
    assert 100 <= idx < 250 and idx == 100 + os.getpid() % 150
    assert net.host_ip == "127.0.0.1" and net.netns_path is None and net.holder is None
    assert net.service_cidr == f"198.19.{idx}.128/25"
    net.close()
    net.close()  # nothing to stop, twice


def test_the_environment_chooses_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMCP_E2E_POD_NETWORK", "loopback")
    assert PodNetwork.create().mode == "loopback"


def test_an_unknown_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PodNetworkError, match="unknown pod network mode 'bridge'"):
        PodNetwork.create("bridge")
    monkeypatch.setenv("CMCP_E2E_POD_NETWORK", "vxlan")
    with pytest.raises(PodNetworkError, match="'vxlan'"):
        PodNetwork.create()


def test_netns_layout_keeps_the_apiserver_and_services_in_the_benchmarking_range() -> None:
    net = PodNetwork("netns", 7, "198.19.7.1", "198.19.7.128/25")
    benchmarking = ipaddress.ip_network("198.18.0.0/15")
    service_net = ipaddress.ip_network(net.service_cidr)
    assert net.first_service_ip == "198.19.7.129"
    assert ipaddress.ip_address(net.first_service_ip) in service_net
    assert service_net.subnet_of(benchmarking)  # type: ignore[arg-type]
    assert ipaddress.ip_address(net.host_ip) in benchmarking
    assert ipaddress.ip_address(net.host_ip) not in service_net
