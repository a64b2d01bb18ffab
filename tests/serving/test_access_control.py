"""Access control on a real server: read vs admin tokens, mutual TLS, and no plaintext beyond loopback."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import server as server_module
from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.backends import Engine, create_engine
from serving.batcher import DynamicBatcher
from serving.bundle import Manifest
from serving.client import RetrievalClient
from serving.index.build import build_index, items_from_folder
from serving.retry_policy import RetryPolicy
from serving.server import create_server
from serving.service import RetrievalService
from serving.tls import PlaintextBindRefused, check_bind, is_loopback, server_credentials

ADMIN, READ = "admin-secret", "read-secret"
QUERY = "0003_c1s1_000001_00.jpg"
CODE = grpc.StatusCode


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path, tiny_manifest: Manifest) -> Engine:
    return create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")


@pytest.fixture
def service(engine: Engine, tiny_manifest: Manifest, gallery_images: Path) -> Iterator[RetrievalService]:
    index = build_index(engine, tiny_manifest, items_from_folder(gallery_images), progress=False)[0]
    with RetrievalService(engine, index, tiny_manifest, batcher=DynamicBatcher(engine.embed, 8)) as svc:
        yield svc


def _serve(service: RetrievalService, **kwargs: object) -> tuple[grpc.Server, int]:
    server, port = create_server(service, port=0, **kwargs)  # type: ignore[arg-type]
    server.start()
    return server, port


def _code(call, request, metadata=()) -> CODE:
    try:
        call(request, metadata=metadata, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return CODE.OK


def test_read_token_searches_but_cannot_change_the_gallery(service, gallery_images: Path) -> None:
    server, port = _serve(service, auth_token=ADMIN, read_token=READ)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RetrievalStub(channel)
            search = pb.SearchRequest(image=(gallery_images / QUERY).read_bytes(), k=1)
            add = pb.AddItemsRequest(items=[pb.NewItem(id="new", vector=pb.Vector(values=[1.0] * 16))])
            remove = pb.RemoveItemsRequest(ids=["new"])
            as_read, as_admin = (("authorization", f"Bearer {READ}"),), (("authorization", f"Bearer {ADMIN}"),)
            for call, request in ((stub.Search, search), (stub.Embed, pb.EmbedRequest(image=search.image)),
                                  (stub.Stats, pb.StatsRequest()), (stub.AddItems, add)):
                assert _code(call, request) == CODE.UNAUTHENTICATED
                assert _code(call, request, (("authorization", "Bearer guess"),)) == CODE.UNAUTHENTICATED
            assert stub.Search(search, metadata=as_read, timeout=10).items[0].id == QUERY
            assert _code(stub.Stats, pb.StatsRequest(), as_read) == CODE.OK
            with pytest.raises(grpc.RpcError) as denied:
                stub.AddItems(add, metadata=as_read, timeout=10)
            assert denied.value.code() == CODE.PERMISSION_DENIED
            assert "needs the admin token; the token sent is the read-only token" in denied.value.details()
            assert _code(stub.RemoveItems, remove, as_read) == CODE.PERMISSION_DENIED
            assert service.count() == 20  # nothing changed
            assert stub.AddItems(add, metadata=as_admin, timeout=10).count == 21  # admin may change it
            assert stub.RemoveItems(remove, metadata=as_admin, timeout=10).count == 20
            assert stub.Search(search, metadata=as_admin, timeout=10).items[0].id == QUERY  # and read
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(None)


def test_read_token_alone_disables_gallery_changes(service, gallery_images: Path) -> None:
    server, port = _serve(service, read_token=READ)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RetrievalStub(channel)
            with pytest.raises(grpc.RpcError) as denied:
                stub.RemoveItems(pb.RemoveItemsRequest(ids=[QUERY]), metadata=(("authorization", f"Bearer {READ}"),),
                                 timeout=10)
            assert denied.value.code() == CODE.PERMISSION_DENIED and "no admin token" in denied.value.details()
            assert service.count() == 20
    finally:
        server.stop(None)


def test_equal_read_and_admin_tokens_are_refused(service) -> None:
    with pytest.raises(ValueError, match="read token equals the admin token"):
        create_server(service, port=0, auth_token=ADMIN, read_token=ADMIN)


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                                 ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                                 ("::", False), ("10.1.2.3", False), ("example.com", False)])
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_plaintext_beyond_loopback_is_refused_even_with_a_token(service, caplog) -> None:
    with pytest.raises(PlaintextBindRefused, match="refusing to serve plaintext gRPC on '0.0.0.0'.*--tls-cert"):
        create_server(service, port=0, host="0.0.0.0", auth_token=ADMIN)
    check_bind("0.0.0.0", tls=False, allow_plaintext_remote=True)  # the explicit opt-out only warns
    assert "serving plaintext gRPC on 0.0.0.0 (--allow-plaintext-remote)" in caplog.text
    caplog.clear()
    check_bind("0.0.0.0", tls=True)  # TLS: neither refused nor warned about
    check_bind("0.0.0.0", tls=True, allow_plaintext_remote=True)
    assert not [r for r in caplog.records if "plaintext" in r.getMessage()]


def test_cdd_serve_exits_2_for_a_plaintext_remote_bind(tiny_bundle: Path, tmp_path: Path, caplog) -> None:
    code = server_module.main(["--bundle", str(tiny_bundle), "--index", str(tmp_path / "missing-index"),
                               "--host", "0.0.0.0", "--port", "0"])
    assert code == 2  # refused before the (missing) index is even looked at
    assert "refusing to serve plaintext gRPC on '0.0.0.0'" in caplog.text and "missing-index" not in caplog.text


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def _make_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate (localhost, 127.0.0.1) and a client certificate it signed, plus a
    client certificate signed by another CA."""
    paths = {name: folder / f"{name}.pem" for name in
             ("ca", "ca-key", "server", "server-key", "client", "client-key", "rogue-ca", "rogue-ca-key",
              "rogue", "rogue-key")}
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", *ec, "-keyout", str(paths[f"{ca}-key"]), "-out", str(paths[ca]), "-days", "1",
                 "-subj", f"/CN=test {ca}")
    for name, ca, extra in (("server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                            ("client", "ca", "extendedKeyUsage=clientAuth"),
                            ("rogue", "rogue-ca", "extendedKeyUsage=clientAuth")):
        csr = folder / f"{name}.csr"
        _openssl("req", "-new", *ec, "-keyout", str(paths[f"{name}-key"]), "-out", str(csr), "-subj", f"/CN={name}")
        ext = folder / f"{name}.ext"
        ext.write_text(extra + "\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(paths[ca]), "-CAkey", str(paths[f"{ca}-key"]),
                 "-CAcreateserial", "-out", str(paths[name]), "-days", "1", "-extfile", str(ext))
    return paths


def test_mutual_tls_requires_a_client_certificate_from_the_ca(service, gallery_images: Path, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make throwaway certificates")
    pki = _make_pki(tmp_path)
    server, port = _serve(service, tls_cert=pki["server"], tls_key=pki["server-key"], tls_client_ca=pki["ca"],
                          host="127.0.0.1")
    target = f"localhost:{port}"
    image = (gallery_images / QUERY).read_bytes()
    try:
        with RetrievalClient(target, tls_ca=pki["ca"], tls_cert=pki["client"], tls_key=pki["client-key"]) as ok:
            assert ok.search(image, k=1)[0].id == QUERY
        for cert, key in ((None, None), (pki["rogue"], pki["rogue-key"])):  # no certificate / another CA's
            # fail fast: a waiting client (the default) would report the refused handshake as its deadline
            with RetrievalClient(target, tls_ca=pki["ca"], tls_cert=cert, tls_key=key, timeout=5,
                                 retry=RetryPolicy(wait_for_ready=False)) as refused:
                with pytest.raises(grpc.RpcError) as caught:
                    refused.search(image, k=1)
                assert caught.value.code() == CODE.UNAVAILABLE  # the handshake fails before any RPC
    finally:
        server.stop(None)


def test_tls_file_problems_name_the_file(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make throwaway certificates")
    pki = _make_pki(tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    missing = tmp_path / "missing.pem"
    encrypted = tmp_path / "encrypted-key.pem"
    _openssl("pkey", "-in", str(pki["server-key"]), "-out", str(encrypted), "-aes256", "-passout", "pass:secret")
    cases = [
        (pki["server"], encrypted, None, rf"{encrypted} \(the TLS private key\): the private key is encrypted"),
        (pki["server"], pki["rogue-key"], None, rf"{pki['rogue-key']} \(the TLS private key\) does not belong to "
                                                 rf"the certificate {pki['server']}"),
        (pki["server"], pki["server"], None, rf"{pki['server']} \(the TLS private key\): no PEM private key"),
        (pki["server-key"], pki["server-key"], None, rf"{pki['server-key']} \(the TLS certificate\): no PEM cert"),
        (garbage, pki["server-key"], None, rf"{garbage} \(the TLS certificate\): not a valid PEM certificate"),
        (pki["server"], missing, None, rf"{missing}: cannot read the TLS private key \(No such file"),
        (pki["server"], pki["server-key"], garbage, rf"{garbage} \(the client CA certificate\): not a valid PEM"),
    ]
    for cert, key, ca, message in cases:
        with pytest.raises(ValueError, match=message):
            server_credentials(cert, key, ca)
    server_credentials(pki["server"], pki["server-key"], pki["ca"])  # the good files pass
