"""Mutual TLS between gateways: the right certificates talk, everyone else is refused."""

from __future__ import annotations

import pytest
import torch

from suanwang.runtime.compress.none import NoneCodec
from suanwang.runtime.flat import digest
from suanwang.runtime.strategies.diloco import DilocoCenter
from suanwang.runtime.wan import transport as tr
from suanwang.runtime.wan.gateway import Gateway
from suanwang.runtime.wan.tls import TlsFiles, make_dev_ca

JOB, TOKEN, NUMEL = "job-tls", "tok", 100


def tls_of(d, center):
    return TlsFiles.load(d / "ca.pem", d / f"{center}.pem", d / f"{center}.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    good = tmp_path_factory.mktemp("pki")
    make_dev_ca(good, ["a", "b", "c"])
    other = tmp_path_factory.mktemp("other")
    make_dev_ca(other, ["b"])
    return good, other


@pytest.fixture
def gw_a(pki):
    good, _ = pki
    t = tr.GrpcTransport(tr.Identity(JOB, "a", TOKEN, frozenset({"b"})), tls=tls_of(good, "a"))
    g = Gateway("a", ["b"], t, NoneCodec(), DilocoCenter(1.0, 0.0, False), NUMEL, JOB, 2**20, 2**24)
    g.start()
    g.init(torch.zeros(NUMEL))
    yield g
    g.close()


def client(identity_center, tls):
    t = tr.GrpcTransport(tr.Identity(JOB, identity_center, TOKEN, frozenset({"a"})), tls=tls)
    return t


def test_mtls_handshake_with_valid_certificate(pki, gw_a):
    good, _ = pki
    c = client("b", tls_of(good, "b"))
    try:
        c.start(gw_a)
        rtt = c.connect({"a": gw_a.address}, timeout=10)
        assert rtt["a"] > 0
    finally:
        c.close()


def test_certificate_from_another_ca_is_refused(pki, gw_a):
    _, other = pki
    before = digest(gw_a.strategy.params)
    c = client("b", tls_of(other, "b"))
    try:
        c.start(gw_a)
        with pytest.raises(ConnectionError, match="handshake with a"):
            c.connect({"a": gw_a.address}, timeout=3)
    finally:
        c.close()
    assert digest(gw_a.strategy.params) == before


def test_valid_certificate_of_another_center_cannot_impersonate(pki, gw_a):
    good, _ = pki
    c = client("b", tls_of(good, "c"))  # c's certificate, claiming to be b
    try:
        c.start(gw_a)
        with pytest.raises(ConnectionError, match=r"claims to be 'b' but its certificate names \['c'\]"):
            c.connect({"a": gw_a.address}, timeout=10)
    finally:
        c.close()
    assert any("claims to be 'b'" in r for r in gw_a.stats()["rejected"])


def test_plaintext_client_cannot_talk_to_tls_gateway(gw_a):
    c = client("b", None)
    try:
        c.start(gw_a)
        with pytest.raises(ConnectionError):
            c.connect({"a": gw_a.address}, timeout=3)
    finally:
        c.close()


def test_unreadable_or_non_pem_tls_file_names_the_field(tmp_path):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "junk.key").write_text("not pem")
    with pytest.raises(ValueError, match=r"wan.tls.cert: cannot read .*missing.pem"):
        TlsFiles.load(tmp_path / "ca.pem", tmp_path / "missing.pem", tmp_path / "junk.key")
    with pytest.raises(ValueError, match=r"wan.tls.key: .*junk.key is not a PEM file"):
        TlsFiles.load(tmp_path / "ca.pem", tmp_path / "ca.pem", tmp_path / "junk.key")
