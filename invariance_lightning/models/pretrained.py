"""The pretrained CIFAR-10 ResNets of the public release, found locally or downloaded and checked by sha256.

The files are those of the akamaster/pytorch_resnet_cifar10 repository (``pretrained_models/``, BSD-2-Clause), the
weights :func:`~invariance_lightning.models.load_cifar_resnet` was written for. Only files whose sha256 could be
checked against a known copy are listed in :data:`PRETRAINED_CIFAR_RESNETS`; other depths have to be supplied as
local files.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import tempfile
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from invariance_lightning.deprecation import deprecated_aliases
from invariance_lightning.locations import (
    SHARED_DIR_ENV,
    SHARED_WEIGHTS_SUBDIR,
    cache_dir,
    shared_dir,
    shared_dir_origin,
)

__all__ = [
    "DEFAULT_WEIGHTS_URL",
    "PRETRAINED_CIFAR_RESNETS",
    "SHARED_DIR_ENV",
    "SHARED_WEIGHTS_SUBDIR",
    "WEIGHTS_URL_ENV",
    "ChecksumError",
    "DownloadError",
    "PretrainedFile",
    "cifar_resnet_weights",
    "download_file",
    "release_name",
    "sha256_file",
    "weights_cache_dir",
]

#: Environment variable that replaces :data:`DEFAULT_WEIGHTS_URL` (a mirror, or a local server in tests).
WEIGHTS_URL_ENV = "INVARIANCE_WEIGHTS_URL"
#: Folder URL of the release; a file's URL is ``<base>/<filename>``.
DEFAULT_WEIGHTS_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models"

_CHUNK = 1 << 16


@dataclass(frozen=True)
class PretrainedFile:
    """One released weights file: its name in the release, its size in bytes and its sha256 (hex)."""

    filename: str
    size: int
    sha256: str


#: The downloadable weights, by model name. The hashes were computed from copies of the release (the hex in a file
#: name is the prefix of its sha256).
PRETRAINED_CIFAR_RESNETS: dict[str, PretrainedFile] = {
    "resnet20": PretrainedFile(
        "resnet20-12fca82f.th", 1_099_231, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"
    ),
    "resnet56": PretrainedFile(
        "resnet56-4bfd9763.th", 3_471_733, "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"
    ),
}


class DownloadError(OSError):
    """A download that did not complete (network error, connection closed early, HTTP error)."""


class ChecksumError(DownloadError):
    """A downloaded or cached file whose sha256 is not the pinned one."""


def weights_cache_dir() -> Path:
    """``weights/`` in :func:`~invariance_lightning.locations.cache_dir` (where CIFAR-10 is downloaded too)."""
    return cache_dir() / "weights"


def sha256_file(path: str | PathLike[str]) -> str:
    """The sha256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(sha256: object) -> str:
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(f"`sha256` must be 64 hex digits, got {sha256!r}")
    return sha256.lower()


def download_file(url: str, destination: str | PathLike[str], sha256: str, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``destination`` only if its bytes have the given sha256.

    The body is streamed into a temporary file in ``destination``'s folder while it is hashed, and renamed into place
    (atomically) once the hash matches. On a mismatch, a connection closed early or any other failure, the temporary
    file is removed and nothing is left at ``destination``.

    Raises:
        ChecksumError: the bytes arrived but their sha256 differs (the message names the URL and both hashes).
        DownloadError: the request failed or ended early (the original error is chained).
    """
    if not isinstance(url, str) or not url:
        raise TypeError(f"`url` must be a non-empty str, got {url!r}")
    expected = _check_sha256(sha256)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"`timeout` must be a positive number of seconds, got {timeout!r}")
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    try:
        digest, received = hashlib.sha256(), 0
        with os.fdopen(handle, "wb") as file:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    announced = response.headers.get("Content-Length")
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        digest.update(chunk)
                        file.write(chunk)
                        received += len(chunk)
            except (OSError, http.client.HTTPException) as err:
                raise DownloadError(f"download of {url} failed: {type(err).__name__}: {err}") from err
        # read(n) returns b"" rather than raising when the connection closes before Content-Length bytes
        if announced is not None and announced.isdigit() and received != int(announced):
            raise DownloadError(
                f"download of {url} failed: the connection closed after {received} of {int(announced)} bytes"
            )
        actual = digest.hexdigest()
        if actual != expected:
            raise ChecksumError(
                f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}; the file was discarded "
                "(a corrupted transfer, or the server does not hold the pinned file)"
            )
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return destination


def cifar_resnet_weights(
    spec: str | PathLike[str],
    *,
    search_dirs: Iterable[str | PathLike[str]] = (),
    cache_dir: str | PathLike[str] | None = None,
    base_url: str | None = None,
    download: bool = True,
    timeout: float = 60.0,
) -> Path:
    """The weights file that ``spec`` names: ``spec`` itself when it is an existing file, else the file of the released
    CIFAR-10 model of that name (``"resnet20"``, ...), downloaded if needed.

    A released model is looked for, in order:

    1. ``<name>-*.th`` in each of ``search_dirs``, then in the shared folder's ``weights/cifar10-resnet``
       (:func:`~invariance_lightning.locations.shared_dir`), used as they are;
    2. the release's file in ``cache_dir`` (default :func:`weights_cache_dir`), used only if its sha256 is the pinned
       one;
    3. downloaded into ``cache_dir`` from ``<base_url>/<filename>`` (default ``$INVARIANCE_WEIGHTS_URL``, else
       :data:`DEFAULT_WEIGHTS_URL`) with :func:`download_file`, when ``download`` and the model has a pinned file in
       :data:`PRETRAINED_CIFAR_RESNETS`. A cached file with the wrong hash is replaced.

    Raises:
        ValueError: ``spec`` is neither an existing file nor a name like ``"resnet20"``.
        FileNotFoundError: not found and not downloadable (listing the places looked in, the shared folder's origin and
            what to set).
        ChecksumError: the cached file is corrupt and ``download`` is False, or the download is.
        DownloadError: the download failed.
    """
    if isinstance(search_dirs, (str, PathLike)):
        raise TypeError(f"`search_dirs` must be an iterable of folders, not a single path ({search_dirs!r})")
    if not isinstance(spec, (str, PathLike)):
        raise TypeError(f"`spec` must be a weights file or a model name (str or path), got {type(spec).__name__}")
    name = release_name(spec)
    if name is None:
        if Path(spec).is_file():
            return Path(spec)
        raise FileNotFoundError(
            f"weights {str(spec)!r}: no such file, and not the name of a released CIFAR ResNet (expected a weights "
            f"file or a name like 'resnet20'; downloadable: {', '.join(sorted(PRETRAINED_CIFAR_RESNETS))})"
        )
    folders = [Path(folder) for folder in search_dirs]
    shared = shared_dir()
    if shared is not None:
        folders.append(shared / SHARED_WEIGHTS_SUBDIR)
    try:
        return _released_weights(name, folders, cache_dir, base_url, download, timeout)
    except (FileNotFoundError, DownloadError) as error:
        raise type(error)(
            f"{error}\nThe shared folder: {shared_dir_origin()}. Set ${SHARED_DIR_ENV} to a folder holding "
            f"{SHARED_WEIGHTS_SUBDIR}/{name}-*.th, pass the weights file itself, or allow the download on a machine "
            "with internet access"
        ) from error


def _released_weights(
    name: str,
    folders: list[Path],
    cache_dir: str | PathLike[str] | None,
    base_url: str | None,
    download: bool,
    timeout: float,
) -> Path:
    """The released model ``name``: a local copy in ``folders``, else the checked cache, else a download."""
    for folder in folders:
        found = sorted(folder.glob(f"{name}-*.th")) if folder.is_dir() else []
        if found:
            return found[0]
    looked = [f"{folder}/{name}-*.th" for folder in folders]
    pinned = PRETRAINED_CIFAR_RESNETS.get(name)
    if pinned is None:
        raise FileNotFoundError(
            f"no weights for {name}: looked for {', '.join(looked) or 'no local folder'}, and {name} has no pinned "
            f"download (downloadable: {', '.join(sorted(PRETRAINED_CIFAR_RESNETS))})"
        )
    path = Path(cache_dir) / pinned.filename if cache_dir is not None else weights_cache_dir() / pinned.filename
    if path.is_file():
        actual = sha256_file(path)
        if actual == pinned.sha256:
            return path
        if not download:
            raise ChecksumError(
                f"cached {path} is corrupt: expected sha256 {pinned.sha256}, got {actual}; delete it, or allow the "
                "download to replace it"
            )
        print(f"cached {path} has the wrong sha256 ({actual}); downloading it again", file=sys.stderr)
    if not download:
        raise FileNotFoundError(
            f"no weights for {name}: looked for {', '.join([*looked, str(path)])}, and downloading is disabled"
        )
    url = f"{(base_url or os.environ.get(WEIGHTS_URL_ENV) or DEFAULT_WEIGHTS_URL).rstrip('/')}/{pinned.filename}"
    print(f"downloading {url} ({pinned.size / 1e6:.1f} MB) to {path}", file=sys.stderr, flush=True)
    return download_file(url, path, pinned.sha256, timeout=timeout)


def release_name(spec: str | PathLike[str]) -> str | None:
    """``spec`` when it names a model of the release (``"resnet20"``, ...) rather than an existing file, else None."""
    name = str(spec)
    return name if re.fullmatch(r"resnet\d+", name) and not Path(spec).is_file() else None


#: Old names, kept working with a DeprecationWarning.
__getattr__ = deprecated_aliases(__name__, globals(), {"resolve_cifar_resnet_weights": "cifar_resnet_weights"})
