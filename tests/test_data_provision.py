"""``provision``: found locally, else apt-get (Debian, root; the command runner is faked, apt-get never runs),
else the checksum-verified download (from a local HTTP server), else one clear error listing what was tried."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest
from test_data_download import FixtureServer, serve_idx_dataset, server  # noqa: F401  (server is a fixture)
from test_data_readers import write_mnist_layout

from robustlr.data import (
    DATA_ENV_VAR,
    REMOTE_FILES,
    DataRootError,
    DatasetNotFoundError,
    RemoteFile,
    load_dataset,
    provision,
)
from robustlr.data import apt

INSTALL = ["apt-get", "install", "-y", "dataset-fashion-mnist"]
UPDATE = ["apt-get", "update"]
NOTICE = "robustlr: fashion-mnist not found; installing the Debian package dataset-fashion-mnist with apt-get ..."


class FakeApt:
    """A command runner standing in for apt-get: records each command, answers from a script of results;
    an install answered with status 0 writes the package's files into ``system/fashion-mnist``."""

    def __init__(self, system: Path, *results: tuple[int, str]) -> None:
        self.system, self.results, self.commands = system, list(results), []

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.commands.append(list(argv))
        status, output = self.results.pop(0)
        if status == 0 and list(argv) == INSTALL:
            write_mnist_layout(self.system / "fashion-mnist", n_train=30, n_test=20)
        return status, output


def refuse_to_run(argv: Sequence[str]) -> tuple[int, str]:
    raise AssertionError(f"no command may run here; got {argv}")


@pytest.fixture
def bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine without the data: empty HOME and system data directory, no $ROBUSTLR_DATA, no real apt-get,
    and no route to the real download hosts (every entry points at a closed local port)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.setattr("robustlr.data.discovery.SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.setattr(apt, "run_command", refuse_to_run)
    closed = closed_port_url()
    monkeypatch.setitem(REMOTE_FILES, "fashion-mnist",
                        tuple(RemoteFile(f"{closed}/{r.filename}", md5=r.md5, sha256=r.sha256)
                              for r in REMOTE_FILES["fashion-mnist"]))
    return tmp_path


@pytest.fixture
def debian_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """apt-get can run: a Debian machine, apt-get on PATH, effective uid 0."""
    (tmp_path / "debian_version").write_text("12.0\n")
    monkeypatch.setattr(apt, "DEBIAN_VERSION_FILE", tmp_path / "debian_version")
    monkeypatch.setattr(apt.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def closed_port_url() -> str:
    """``http://127.0.0.1:<port>`` for a port nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_found_locally_installs_and_downloads_nothing(bare: Path, debian_root: None) -> None:
    write_mnist_layout(bare / "system" / "fashion-mnist")
    said: list[str] = []
    files = provision("fashion-mnist", runner=refuse_to_run, notify=said.append, progress=False)
    assert said == [] and list(files) == ["train", "test"]
    assert files["test"][1] == bare / "system" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"


def test_apt_installs_the_package_after_one_notice(bare: Path, debian_root: None, capsys) -> None:
    fake = FakeApt(bare / "system", (0, "Reading package lists...\nSetting up dataset-fashion-mnist ...\n"))
    said: list[str] = []
    files = provision("fashion-mnist", runner=fake, notify=said.append, progress=False)
    assert fake.commands == [INSTALL] and said == [NOTICE]
    assert files["train"][0].parent == bare / "system" / "fashion-mnist"
    assert "Reading package lists" not in capsys.readouterr().err  # apt's output is shown only on failure
    assert len(load_dataset("fashion-mnist", "train")) == 30


def test_default_notice_is_one_line_on_stderr(bare: Path, debian_root: None, capsys) -> None:
    provision("fashion-mnist", "test", runner=FakeApt(bare / "system", (0, "done")), progress=False)
    assert capsys.readouterr().err.splitlines() == [NOTICE]


def test_stale_package_lists_are_updated_and_the_install_retried_once(bare: Path, debian_root: None) -> None:
    fake = FakeApt(bare / "system", (100, "E: Unable to locate package dataset-fashion-mnist"), (0, "Hit:1"), (0, "ok"))
    said: list[str] = []
    provision("fashion-mnist", runner=fake, notify=said.append, progress=False)
    assert fake.commands == [INSTALL, UPDATE, INSTALL] and said == [NOTICE]


def test_apt_failure_falls_back_to_the_verified_download(
    bare: Path, debian_root: None, server: FixtureServer, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setitem(REMOTE_FILES, "fashion-mnist", serve_idx_dataset(server))
    fake = FakeApt(bare / "system", (100, "E: Unable to locate package dataset-fashion-mnist"), (0, "Hit:1"),
                   (100, "Reading package lists...\nE: Unable to locate package dataset-fashion-mnist"))
    said: list[str] = []
    files = provision("fashion-mnist", runner=fake, notify=said.append, progress=False)
    cache = bare / "home" / ".cache" / "robustlr" / "fashion-mnist"
    assert fake.commands == [INSTALL, UPDATE, INSTALL] and len(server.requests) == 4
    assert files["test"] == [cache / "t10k-images-idx3-ubyte.gz", cache / "t10k-labels-idx1-ubyte.gz"]
    assert said[0] == NOTICE and len(said) == 3
    assert "failed (exit 100) after apt-get update: Reading package lists... | E: Unable to locate" in said[1]
    assert said[2] == f"robustlr: fashion-mnist not found; downloading it (checksum-verified) into {cache} ..."
    assert len(load_dataset("fashion-mnist", "test")) == 10


def test_no_root_and_no_network_is_one_clear_error(bare: Path, debian_root: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(DatasetNotFoundError) as caught:
        provision("fashion-mnist", runner=refuse_to_run, notify=lambda line: None, progress=False)
    message = str(caught.value)
    cache = bare / "home" / ".cache" / "robustlr" / "fashion-mnist"
    assert message.startswith("fashion-mnist (train split) not found")
    assert caught.value.tried[0] == ("apt-get install -y dataset-fashion-mnist: not run: not root (effective uid "
                                     "1000); as root run: apt-get install -y <package>")
    assert caught.value.tried[1].startswith(f"download into {cache}: http://127.0.0.1:")
    assert "Connection refused" in caught.value.tried[1] and len(caught.value.tried) == 2
    assert "\nTried:\n  - apt-get install -y dataset-fashion-mnist: not run: not root" in message
    assert "To get the data:\n  - install the Debian package" in message
    assert not any(path.is_file() for path in cache.rglob("*"))  # nothing partial left behind


def test_not_debian_and_download_off(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apt, "DEBIAN_VERSION_FILE", bare / "missing")
    with pytest.raises(DatasetNotFoundError) as caught:
        provision("fashion-mnist", "test", download=False, runner=refuse_to_run, notify=lambda line: None)
    assert caught.value.split == "test"
    assert caught.value.tried == (
        f"apt-get install -y dataset-fashion-mnist: not run: not a Debian system ({bare / 'missing'} is missing)",
        "download: not tried (download=False; CLI: --no-download)",
    )


def test_apt_get_that_cannot_start_and_an_unwritable_cache_are_reported(bare: Path, debian_root: None) -> None:
    def missing_program(argv: Sequence[str]) -> tuple[int, str]:
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    (bare / "home").mkdir()
    (bare / "home" / ".cache").write_text("a file where the cache directory should be")
    with pytest.raises(DatasetNotFoundError) as caught:
        provision("fashion-mnist", runner=missing_program, notify=lambda line: None, progress=False)
    apt_line, download_line = caught.value.tried
    assert apt_line.startswith("apt-get install -y dataset-fashion-mnist failed (exit -1: [Errno 2] No such file")
    assert download_line.startswith(f"download into {bare / 'home' / '.cache' / 'robustlr' / 'fashion-mnist'}: ")


def test_a_named_root_is_the_only_place_and_is_never_provisioned(
    bare: Path, debian_root: None, server: FixtureServer, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setitem(REMOTE_FILES, "fashion-mnist", serve_idx_dataset(server))
    write_mnist_layout(bare / "system" / "fashion-mnist")  # present elsewhere: must not be used
    (bare / "mine").mkdir()
    with pytest.raises(DataRootError, match=f"root= \\(CLI: --data-root\\) {bare / 'mine'} lacks "):
        provision("fashion-mnist", root=bare / "mine", runner=refuse_to_run, notify=refuse_to_run)
    assert server.requests == []
    write_mnist_layout(bare / "mine" / "fashion-mnist", n_train=12)
    files = provision("fashion-mnist", "train", root=bare / "mine", runner=refuse_to_run, notify=refuse_to_run)
    assert files == {"train": [bare / "mine" / "fashion-mnist" / f"train-{kind}-ubyte.gz"
                               for kind in ("images-idx3", "labels-idx1")]}


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "digits"}, "name must be one of 'fashion-mnist', 'mnist', 'cifar10', 'cifar100'; got 'digits'"),
    ({"splits": "val"}, "split must be one of 'train', 'test'; got 'val'"),
    ({"splits": []}, "splits must be one of .* or a non-empty sequence of them; got \\[\\]"),
    ({"splits": 3}, "splits must be .*; got 3"),
    ({"apt": 1}, "apt must be True or False; got 1"),
    ({"download": "no"}, "download must be True or False; got 'no'"),
    ({"progress": None}, "progress must be True or False; got None"),
    ({"runner": "apt-get"}, "runner must be a callable or None; got 'apt-get'"),
    ({"notify": 1}, "notify must be a callable or None; got 1"),
])
def test_bad_arguments_are_refused_before_any_step(bare: Path, debian_root: None, kwargs: dict, match: str) -> None:
    arguments = {"name": "fashion-mnist", "runner": refuse_to_run, "notify": refuse_to_run, **kwargs}
    with pytest.raises(ValueError, match=match):
        provision(**arguments)
