"""Download, resume, atomic extraction and checksum verification against a loopback HTTP server."""
import http.server
import socket
import threading
import time
import zipfile

import pytest

from dpstack.datasets import download
from dpstack.datasets.download import DownloadError, ensure_pusht, read_checksums, verify_tree
from dpstack.datasets.paths import PUSHT_ZARR_RELPATH, pusht_zarr_path
from dpstack.datasets.pusht import PushTLowdimDataset
from dpstack.datasets.replay_buffer import ReplayBuffer

PUSHT = pusht_zarr_path()
needs_pusht = pytest.mark.skipif(not PUSHT.exists(), reason=f"Push-T data not found at {PUSHT} (set DP_DATA_DIR)")
CORRUPTED_MEMBER = "pusht/pusht_cchi_v7_replay.zarr/data/action/0.0"


class ZipServer(http.server.ThreadingHTTPServer):
    """Serves named byte payloads with Range support; can cut the next transfer short."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.truncate_next = False
        self.range_headers: list[str | None] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RangeHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        payload = self.server.files.get(self.path)
        if payload is None:
            self.send_error(404)
            return
        requested = self.headers.get("Range")
        self.server.range_headers.append(requested)
        start = int(requested.split("=")[1].split("-")[0]) if requested else 0
        if start >= len(payload) and requested:
            self.send_error(416)
            return
        body = payload[start:]
        self.send_response(206 if requested else 200)
        if requested:
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.truncate_next:
            self.server.truncate_next = False
            body = body[: len(body) // 3]
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


def build_zip(destination, corrupt: bool = False) -> bytes:
    """Zip of the shared Push-T store laid out like the official archive."""
    with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(PUSHT.rglob("*")):
            if path.is_file():
                name = (PUSHT_ZARR_RELPATH.parent / path.relative_to(PUSHT.parent)).as_posix()
                content = path.read_bytes()
                if corrupt and name == CORRUPTED_MEMBER:
                    content = bytes([content[0] ^ 0xFF]) + content[1:]
                archive.writestr(name, content)
    return destination.read_bytes()


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(download.PUSHT_URL_ENV, raising=False)


@pytest.fixture(scope="module")
def zips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zips")
    return {"good": build_zip(folder / "good.zip"), "corrupt": build_zip(folder / "bad.zip", corrupt=True)}


@pytest.fixture
def server(zips):
    server = ZipServer()
    server.files = {"/pusht.zip": zips["good"], "/bad.zip": zips["corrupt"]}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/pusht.zip"


def leftovers(root):
    return sorted(p.name for p in root.rglob("*") if p.name.startswith(".pusht-extract-") or p.suffix == ".part")


@needs_pusht
def test_shipped_checksums_match_the_shared_store():
    checksums = read_checksums()
    assert len(checksums) == 819
    verify_tree(PUSHT.parent, checksums, PUSHT.name)


@needs_pusht
def test_full_download_extracts_verified_store(server, tmp_path):
    root = tmp_path / "data"
    path = ensure_pusht(root, allow_download=True, url=f"{server.base_url}/pusht.zip")
    assert path == root / PUSHT_ZARR_RELPATH
    buffer = ReplayBuffer.open(path)
    assert (buffer.n_episodes, buffer.n_steps) == (206, 25650)
    assert not (root / "pusht.zip").exists() and leftovers(root) == []
    assert ensure_pusht(root, allow_download=False, url=closed_port_url()) == path  # present: no network


@needs_pusht
def test_truncated_transfer_is_resumed_by_second_call(server, tmp_path, monkeypatch):
    root = tmp_path / "data"
    monkeypatch.setenv(download.PUSHT_URL_ENV, f"{server.base_url}/pusht.zip")
    server.truncate_next = True
    with pytest.raises(DownloadError, match="interrupted .*run again to resume") as error:
        ensure_pusht(root, allow_download=True)
    assert f"python -m dpstack.datasets.download pusht --root {root}" in str(error.value)  # same place again
    part = root / "pusht.zip.part"
    assert 0 < part.stat().st_size < len(server.files["/pusht.zip"])
    assert not (root / PUSHT_ZARR_RELPATH).exists()
    ensure_pusht(root, allow_download=True)
    assert server.range_headers == [None, f"bytes={len(server.files['/pusht.zip']) // 3}-"]
    assert ReplayBuffer.open(root / PUSHT_ZARR_RELPATH).n_episodes == 206 and leftovers(root) == []


@needs_pusht
def test_corrupted_file_is_rejected_and_nothing_is_installed(server, tmp_path):
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=r"checksum mismatch for pusht_cchi_v7_replay.zarr/data/action/0\.0"):
        ensure_pusht(root, allow_download=True, url=f"{server.base_url}/bad.zip")
    assert not (root / PUSHT_ZARR_RELPATH).exists() and leftovers(root) == []
    assert (root / "pusht.zip").exists()  # kept for inspection, named in the message


@needs_pusht
def test_cli_downloads_into_root(server, tmp_path, capsys):
    assert download.main(["pusht", "--root", str(tmp_path), "--url", f"{server.base_url}/pusht.zip"]) == 0
    assert "ready at" in capsys.readouterr().out
    assert len(PushTLowdimDataset(tmp_path / PUSHT_ZARR_RELPATH)) == 10726


@needs_pusht
def test_manually_placed_zip_is_used_offline(zips, tmp_path):
    (tmp_path / "pusht.zip").write_bytes(zips["good"])
    assert ensure_pusht(tmp_path, allow_download=False, url=closed_port_url()).exists()


def test_offline_fails_fast_with_manual_instructions(tmp_path):
    started = time.monotonic()
    with pytest.raises(DownloadError) as error:
        ensure_pusht(tmp_path, allow_download=True, url=closed_port_url(), timeout=2)
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert "manually" in message and str(tmp_path / "pusht.zip") in message
    assert download.main(["pusht", "--root", str(tmp_path), "--url", closed_port_url()]) == 1


def test_download_needs_consent(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        ensure_pusht(tmp_path, allow_download=False)
    message = str(error.value)
    assert str(tmp_path / PUSHT_ZARR_RELPATH) in message and "python -m dpstack.datasets.download pusht" in message
    assert "allow_download" in message and "DP_DATA_DIR" in message


def test_missing_store_error_from_dataset_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        PushTLowdimDataset(zarr_path=tmp_path / "nowhere.zarr")
    message = str(error.value)
    assert str(tmp_path / "nowhere.zarr") in message
    assert "DP_DATA_DIR" in message and "data_root" in message and "python -m dpstack.datasets.download pusht" in message
