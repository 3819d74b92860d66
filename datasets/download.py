"""Fetch and verify the data: ``python -m dpstack.datasets.download {pusht,mnist} [--root DIR]``.

Push-T: the zip is downloaded to ``<root>/pusht.zip.part`` (resumed with HTTP Range after an
interruption), extracted into a temporary folder beside the target, checked file by file
against ``datasets/checksums/pusht.sha256`` and only then renamed into place.
MNIST: the four official IDX files into ``<root>/mnist``, each checked against its canonical md5.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from .paths import PUSHT_ZARR_RELPATH, DataNotFoundError, data_root, download_command, missing_pusht_message

PUSHT_URL = "https://diffusion-policy.cs.columbia.edu/data/training/pusht.zip"
PUSHT_URL_ENV = "DP_PUSHT_URL"
CHECKSUM_FILE = Path(__file__).resolve().parent / "checksums" / "pusht.sha256"
ZIP_NAME = "pusht.zip"
READ_BLOCK = 1 << 20
DEFAULT_TIMEOUT_S = 10.0


MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # PyTorch's mirror of the official files
MNIST_URL_ENV = "DP_MNIST_URL"
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


class DownloadError(RuntimeError):
    """The data could not be fetched, or what was fetched failed verification."""


def read_checksums(path: Path = CHECKSUM_FILE) -> dict[str, str]:
    """Map of relative file path to expected sha256 from a ``sha256sum`` listing."""
    checksums = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            checksums[name.lstrip("*")] = digest
    return checksums


def sha256_of(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest (sha256 by default) of a file's content."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(READ_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_tree(base: Path, checksums: dict[str, str], top: str) -> None:
    """Check every file under ``base/top`` against ``checksums`` (paths relative to ``base``)."""
    expected = {name: digest for name, digest in checksums.items() if name.split("/", 1)[0] == top}
    found = {path.relative_to(base).as_posix() for path in (base / top).rglob("*") if path.is_file()}
    missing = sorted(set(expected) - found)
    if missing:
        raise DownloadError(f"{len(missing)} file(s) missing from the download, e.g. {missing[0]}")
    unexpected = sorted(found - set(expected))
    if unexpected:
        raise DownloadError(f"unexpected file {unexpected[0]} in the download (not in {CHECKSUM_FILE.name})")
    for name in sorted(expected):
        if sha256_of(base / name) != expected[name]:
            raise DownloadError(f"checksum mismatch for {name}: the file is corrupted.")


def _offline_message(url: str, zip_path: Path, reason: object, rerun: str) -> str:
    return (f"Could not reach {url} ({reason}).\n"
            f"Download it manually from {url} and save it as {zip_path}, "
            f"then run `{rerun}` again to verify it.")


def fetch(url: str, destination: Path, timeout: float = DEFAULT_TIMEOUT_S, rerun: str | None = None) -> Path:
    """Download ``url`` to ``destination``, resuming ``destination.part`` left by an earlier attempt;
    ``rerun`` is the command that messages tell the user to run again (default: the Push-T download)."""
    rerun = rerun or download_command(destination.parent)
    part = destination.with_name(destination.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing left to send: the part file is complete
            part.replace(destination)
            return destination
        raise DownloadError(f"{url} answered HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, socket.timeout, ConnectionError) as error:
        raise DownloadError(_offline_message(url, destination, getattr(error, "reason", error), rerun)) from error
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=destination.name) as bar:
            try:
                for block in iter(lambda: response.read(READ_BLOCK), b""):
                    out.write(block)
                    bar.update(len(block))
            except (OSError, socket.timeout) as error:
                raise DownloadError(f"download of {url} interrupted ({error}); run again to resume: {rerun}") from error
    received = part.stat().st_size
    if total is not None and received < total:
        raise DownloadError(f"download of {url} interrupted at {received} of {total} bytes; run again to "
                            f"resume: {rerun}")
    part.replace(destination)
    return destination


def _extract_verified(zip_path: Path, root: Path) -> Path:
    """Extract the zip beside the target, verify it, then move the store into place atomically."""
    target = root / PUSHT_ZARR_RELPATH
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pusht-extract-", dir=target.parent))
    try:
        try:
            with zipfile.ZipFile(zip_path) as archive:
                for member in archive.namelist():
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise DownloadError(f"{zip_path} holds an unsafe path {member!r}")
                archive.extractall(staging)
        except zipfile.BadZipFile as error:
            zip_path.unlink()
            raise DownloadError(f"{zip_path} is not a valid zip ({error}); it was deleted, run again: "
                                f"{download_command(root)}") from error
        extracted_parent = staging / PUSHT_ZARR_RELPATH.parent
        try:
            verify_tree(extracted_parent, read_checksums(), PUSHT_ZARR_RELPATH.name)
        except DownloadError as error:
            raise DownloadError(f"{error}\nThe zip was kept at {zip_path}; delete it to download again.") from error
        os.replace(extracted_parent / PUSHT_ZARR_RELPATH.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    zip_path.unlink()
    return target


def ensure_pusht(root: str | os.PathLike | None = None, allow_download: bool = False, url: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> Path:
    """Path of the Push-T store under ``root``, downloading and verifying it first if allowed and absent.

    A zip already at ``<root>/pusht.zip`` (fetched manually) is used without downloading.
    """
    explicit_root, root = root, data_root(root)
    target = root / PUSHT_ZARR_RELPATH
    if target.exists():
        return target
    zip_path = root / ZIP_NAME
    if not zip_path.exists():
        if not allow_download:
            raise DataNotFoundError(missing_pusht_message(explicit_root)
                                    + "\nor let training download it: python train.py allow_download=true")
        root.mkdir(parents=True, exist_ok=True)
        fetch(url or os.environ.get(PUSHT_URL_ENV) or PUSHT_URL, zip_path, timeout)
    return _extract_verified(zip_path, root)


def ensure_mnist(root: str | os.PathLike | None = None, base_url: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> Path:
    """``<root>/mnist`` with the four official files, fetching those that are missing; every file's md5 checked."""
    folder = data_root(root) / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    base_url = base_url or os.environ.get(MNIST_URL_ENV) or MNIST_URL
    for name, expected in MNIST_MD5.items():
        path = folder / name
        if not path.exists():
            fetch(base_url.rstrip("/") + "/" + name, path, timeout,
                  rerun="python -m dpstack.datasets.download mnist" + (f" --root {root}" if root else ""))
        if sha256_of(path, "md5") != expected:
            raise DownloadError(f"checksum mismatch for {path}: the file is corrupted; delete it and run again")
    return folder


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m dpstack.datasets.download", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["pusht", "mnist"])
    parser.add_argument("--root", help="data root (default: $DP_DATA_DIR, the shared folder, or ./data)")
    parser.add_argument("--url", help=f"Push-T zip URL or MNIST folder URL (default: ${PUSHT_URL_ENV} / "
                                      f"${MNIST_URL_ENV} or the official one)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="connection timeout in seconds")
    args = parser.parse_args(argv)
    try:
        if args.dataset == "mnist":
            path = ensure_mnist(args.root, args.url, args.timeout)
        else:
            path = ensure_pusht(args.root, allow_download=True, url=args.url, timeout=args.timeout)
    except (DownloadError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.dataset} data ready at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
