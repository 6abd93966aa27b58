"""Downloads against a local ThreadingHTTPServer (127.0.0.1, port 0) serving fixture files, safe tar
extraction, and the checksum table."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from test_data_readers import idx_bytes, write_cifar10_layout  # fixture writers (tests/ has no __init__.py)

from robustlr.data import (
    DATA_ENV_VAR,
    REMOTE_FILES,
    DownloadError,
    RemoteFile,
    download_dataset,
    download_file,
    extract_tar,
    load_dataset,
)


@dataclass
class Route:
    """What the server answers for one path."""

    body: bytes
    content_length: int | None = None  # None: the body's true length; -1: no header at all
    cut_after: int | None = None  # send only this many bytes of the body
    wait: threading.Event | None = None  # block before answering until set


@dataclass
class FixtureServer:
    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def serve(self, path: str, body: bytes, **options) -> str:
        self.routes[path] = Route(body, **options)
        return self.url + path


@pytest.fixture
def server() -> Iterator[FixtureServer]:
    """A threaded HTTP server on a free local port, shut down at the end of the test."""
    state = FixtureServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            route = state.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            if route.wait is not None:
                route.wait.wait(timeout=10)
            self.send_response(200)
            length = len(route.body) if route.content_length is None else route.content_length
            if length >= 0:
                self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(route.body[: route.cut_after])
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        for route in state.routes.values():
            if route.wait is not None:
                route.wait.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def entries(directory: Path) -> list[str]:
    """Everything in ``directory``, hidden temporary files included."""
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, several read chunks


# --- download_file --------------------------------------------------------------------------------------


def test_download_succeeds_and_verifies_both_hashes(server: FixtureServer, tmp_path: Path) -> None:
    url = server.serve("/file.bin", PAYLOAD)
    dest = download_file(url, tmp_path / "sub" / "file.bin", md5=md5(PAYLOAD), sha256=sha256(PAYLOAD), progress=False)
    assert dest == tmp_path / "sub" / "file.bin" and dest.read_bytes() == PAYLOAD
    assert entries(tmp_path / "sub") == ["file.bin"]


@pytest.mark.parametrize("known", ["md5", "sha256"])
def test_download_with_one_known_hash(server: FixtureServer, tmp_path: Path, known: str) -> None:
    url = server.serve("/file.bin", PAYLOAD)
    checksum = {"md5": md5(PAYLOAD), "sha256": sha256(PAYLOAD).upper()}[known]
    download_file(url, tmp_path / "file.bin", **{known: checksum}, progress=False)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD


@pytest.mark.parametrize("wrong", ["md5", "sha256"])
def test_checksum_mismatch_leaves_nothing(server: FixtureServer, tmp_path: Path, wrong: str) -> None:
    url = server.serve("/file.bin", PAYLOAD)
    checksums = {"md5": md5(PAYLOAD), "sha256": sha256(PAYLOAD)}
    checksums[wrong] = checksums[wrong][::-1]
    with pytest.raises(DownloadError, match=f"checksum mismatch: {wrong} is"):
        download_file(url, tmp_path / "file.bin", **checksums, progress=False)
    assert entries(tmp_path) == []


def test_content_length_larger_than_body_is_truncation(server: FixtureServer, tmp_path: Path) -> None:
    url = server.serve("/file.bin", PAYLOAD, content_length=len(PAYLOAD) + 1000)
    with pytest.raises(DownloadError, match=f"truncated download: received {len(PAYLOAD)} of {len(PAYLOAD) + 1000}"):
        download_file(url, tmp_path / "file.bin", sha256=sha256(PAYLOAD), progress=False)
    assert entries(tmp_path) == []


def test_body_cut_short_is_truncation(server: FixtureServer, tmp_path: Path) -> None:
    url = server.serve("/file.bin", PAYLOAD, cut_after=1000)
    with pytest.raises(DownloadError, match="truncated download: received 1000 of"):
        download_file(url, tmp_path / "file.bin", sha256=sha256(PAYLOAD), progress=False)
    assert entries(tmp_path) == []


def test_body_cut_short_without_content_length_fails_the_checksum(server: FixtureServer, tmp_path: Path) -> None:
    url = server.serve("/file.bin", PAYLOAD, content_length=-1, cut_after=1000)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_file(url, tmp_path / "file.bin", sha256=sha256(PAYLOAD), progress=False)
    assert entries(tmp_path) == []


def test_http_error_leaves_nothing_and_keeps_an_existing_file(server: FixtureServer, tmp_path: Path) -> None:
    (tmp_path / "file.bin").write_bytes(b"old")
    with pytest.raises(DownloadError, match="HTTP Error 404"):
        download_file(server.url + "/missing", tmp_path / "file.bin", md5=md5(PAYLOAD), progress=False)
    assert entries(tmp_path) == ["file.bin"] and (tmp_path / "file.bin").read_bytes() == b"old"


def test_timeout(server: FixtureServer, tmp_path: Path) -> None:
    url = server.serve("/slow.bin", PAYLOAD, wait=threading.Event())
    with pytest.raises(DownloadError, match="timed out"):
        download_file(url, tmp_path / "slow.bin", sha256=sha256(PAYLOAD), timeout=0.3, progress=False)
    assert entries(tmp_path) == []


def test_file_without_any_known_hash_is_refused(server: FixtureServer, tmp_path: Path) -> None:
    url = server.serve("/file.bin", PAYLOAD)
    with pytest.raises(ValueError, match=r"md5 and sha256 are both None .* refused"):
        download_file(url, tmp_path / "file.bin", progress=False)
    assert server.requests == [] and entries(tmp_path) == []


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), "5", None])
def test_bad_timeout(tmp_path: Path, timeout: object) -> None:
    with pytest.raises(ValueError, match=f"^timeout must be a finite number > 0; got {re.escape(repr(timeout))}$"):
        download_file("http://127.0.0.1:9/x", tmp_path / "x", md5="0" * 32, timeout=timeout)


# --- tar extraction -------------------------------------------------------------------------------------


def make_tar(path: Path, members: list[tuple[str, bytes | None, bytes]]) -> Path:
    """A .tar.gz of (name, link target or None, content) members."""
    with tarfile.open(path, "w:gz") as tar:
        for name, link, content in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link.decode()
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


def test_extract_tar(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tar.gz", [("top/one", None, b"1"), ("top/sub/two", None, b"2")])
    created = extract_tar(archive, tmp_path / "out")
    assert created == [tmp_path / "out" / "top"]
    assert (tmp_path / "out" / "top" / "sub" / "two").read_bytes() == b"2"
    assert entries(tmp_path / "out") == ["top"]


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (("../escape", None, b"x"), "unsafe member path '../escape'"),
        (("top/../../escape", None, b"x"), "unsafe member path"),
        (("/etc/escape", None, b"x"), "unsafe member path '/etc/escape'"),
        (("top/link", b"/etc/passwd", b""), "not a regular file or directory"),
    ],
)
def test_extract_tar_refuses_unsafe_members(tmp_path: Path, member: tuple, message: str) -> None:
    archive = make_tar(tmp_path / "a.tar.gz", [("top/fine", None, b"ok"), member])
    out = tmp_path / "deep" / "out"
    with pytest.raises(DownloadError, match=re.escape(message)):
        extract_tar(archive, out)
    assert entries(out) == [] and entries(tmp_path / "deep") == ["out"] and not (tmp_path / "escape").exists()


def test_extract_tar_does_not_overwrite(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tar.gz", [("top/one", None, b"1")])
    (tmp_path / "out" / "top").mkdir(parents=True)
    with pytest.raises(DownloadError, match="refusing to overwrite"):
        extract_tar(archive, tmp_path / "out")
    assert entries(tmp_path / "out") == ["top"] and entries(tmp_path / "out" / "top") == []


# --- datasets through the registry ----------------------------------------------------------------------


def serve_idx_dataset(server: FixtureServer, n: int = 20) -> tuple[RemoteFile, ...]:
    """Serve the four MNIST-layout files; return registry entries (real names, local URLs, true hashes)."""
    rng = np.random.default_rng(0)
    remote = []
    for stem, array in (
        ("train-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
        ("train-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8)),
        ("t10k-images-idx3-ubyte", rng.integers(0, 256, (n // 2, 28, 28), dtype=np.uint8)),
        ("t10k-labels-idx1-ubyte", (np.arange(n // 2) % 10).astype(np.uint8)),
    ):
        body = gzip.compress(idx_bytes(array))
        remote.append(RemoteFile(server.serve(f"/mnist/{stem}.gz", body), md5=md5(body), sha256=sha256(body)))
    return tuple(remote)


def test_load_dataset_downloads_into_root(
    server: FixtureServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.setitem(REMOTE_FILES, "mnist", serve_idx_dataset(server))
    dataset = load_dataset("mnist", "train", root=tmp_path / "data", download=True)
    assert dataset.images.shape == (20, 1, 28, 28)
    assert entries(tmp_path / "data" / "mnist") == sorted(remote.filename for remote in REMOTE_FILES["mnist"])
    assert len(server.requests) == 4
    assert len(load_dataset("mnist", "test", root=tmp_path / "data", download=True)) == 10
    assert len(server.requests) == 4  # found on disk: nothing fetched again


def test_download_dataset_skips_verified_files_and_replaces_bad_ones(server: FixtureServer, tmp_path: Path) -> None:
    registry = {"mnist": serve_idx_dataset(server)}
    download_dataset("mnist", tmp_path, registry=registry, progress=False)
    assert len(server.requests) == 4
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"corrupted")
    download_dataset("mnist", tmp_path, registry=registry, progress=False)
    assert server.requests[4:] == ["/mnist/t10k-labels-idx1-ubyte.gz"]


def test_download_failure_leaves_no_partial_file(
    server: FixtureServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    good = serve_idx_dataset(server)
    broken = RemoteFile(good[1].url, md5=good[1].md5, sha256="0" * 64)
    monkeypatch.setitem(REMOTE_FILES, "mnist", (good[0], broken, *good[2:]))
    with pytest.raises(DownloadError, match="checksum mismatch"):
        load_dataset("mnist", "train", root=tmp_path, download=True)
    assert entries(tmp_path / "mnist") == ["train-images-idx3-ubyte.gz"]


def test_cifar_archive_is_verified_extracted_and_removed(
    server: FixtureServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "env"))
    write_cifar10_layout(tmp_path / "source", n=3)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "source" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    body = archive.read_bytes()
    url = server.serve("/cifar-10-python.tar.gz", body)
    monkeypatch.setitem(REMOTE_FILES, "cifar10", (RemoteFile(url, md5=md5(body), sha256=sha256(body), extract=True),))
    dataset = load_dataset("cifar10", "train", download=True)  # lands in $ROBUSTLR_DATA/cifar10
    assert dataset.images.shape == (15, 3, 32, 32)
    assert entries(tmp_path / "env" / "cifar10") == ["cifar-10-batches-py"]


def test_download_into_a_root_that_is_a_file_is_refused_before_any_request(
    server: FixtureServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(REMOTE_FILES, "mnist", serve_idx_dataset(server))
    (tmp_path / "root").write_text("a file")
    with pytest.raises(NotADirectoryError, match=f"{tmp_path / 'root'} is not a directory"):
        load_dataset("mnist", "train", root=tmp_path / "root", download=True)
    assert server.requests == []


def test_an_archive_that_is_not_a_tar_is_a_download_error_and_is_removed(
    server: FixtureServer, tmp_path: Path
) -> None:
    body = b"this is not a tar archive" * 10
    url = server.serve("/cifar-10-python.tar.gz", body)
    registry = {"cifar10": (RemoteFile(url, md5=md5(body), sha256=sha256(body), extract=True),)}
    with pytest.raises(DownloadError, match="cifar-10-python.tar.gz: not a readable tar archive"):
        download_dataset("cifar10", tmp_path / "cifar10", registry=registry, progress=False)
    assert entries(tmp_path / "cifar10") == []


def test_download_dataset_unknown_name(tmp_path: Path) -> None:
    allowed = "'fashion-mnist', 'mnist', 'cifar10', 'cifar100'"
    with pytest.raises(ValueError, match=f"^name must be one of {allowed}; got 'svhn'$"):
        download_dataset("svhn", tmp_path)


def test_checksum_table_pins_official_files() -> None:
    assert set(REMOTE_FILES) == {"fashion-mnist", "mnist", "cifar10", "cifar100"}
    hosts = {
        "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    }
    for name, remotes in REMOTE_FILES.items():
        for remote in remotes:
            assert remote.url.startswith(hosts[name])
            assert re.fullmatch("[0-9a-f]{32}", remote.md5) and re.fullmatch("[0-9a-f]{64}", remote.sha256)
            assert remote.extract == name.startswith("cifar")
    assert len(REMOTE_FILES["mnist"]) == len(REMOTE_FILES["fashion-mnist"]) == 4
