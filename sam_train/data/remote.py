"""Opening shards wherever they are: a local path, `pipe:COMMAND`, or any `scheme://` URL.

- Local paths and `file://` open directly.
- `pipe:` runs the command through webdataset's `gopen` (its output is the tar stream; a
  non-zero exit is an error when the stream is read).
- Every other scheme goes through fsspec, which webdataset's own fsspec path and Lightning
  already depend on: `http(s)://` through aiohttp (installed with Lightning), `s3://` through
  s3fs, `gs://` through gcsfs, `az://` through adlfs, ... A scheme whose package is missing
  is refused in one line naming the package to install.
- Opening a remote shard is retried with exponential back-off on transient failures
  (connection errors, time-outs, HTTP 5xx / 429); a missing or forbidden shard is not retried.
  What cannot be opened in the end is raised with its URL; the shard reader counts it as a
  skipped shard and goes on.
"""

from __future__ import annotations

import io
import logging
import time
from typing import IO

import fsspec
import webdataset as wds

from sam_train.errors import UserError

log = logging.getLogger(__name__)

RETRIES = 4  # further attempts after the first failed open of a remote shard
BACKOFF_S = 1.0  # wait before the first retry; doubles each time (1, 2, 4, 8 s)
# fsspec's name for the package each scheme needs (for the one-line error when it is missing)
SCHEME_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


class RemoteError(OSError, UserError):
    """A remote shard or manifest that cannot be opened (after retries), or a scheme with no
    reader installed; one line. A ValueError too, so `sam-train` reports it as bad input."""


def scheme_of(url: str) -> str | None:
    """`s3` for `s3://b/k`, `pipe` for `pipe:cmd`, None for a local path."""
    if url.startswith("pipe:"):
        return "pipe"
    head, sep, _ = url.partition("://")
    return head.lower() if sep and head.isidentifier() else None


def is_remote(url: str) -> bool:
    """Whether `url` is read through a pipe or a network scheme (not a local file)."""
    return scheme_of(url) not in (None, "file")


def check_scheme(url: str) -> None:
    """Refuse, in one line, a URL whose scheme has no reader installed."""
    scheme = scheme_of(url)
    if scheme in (None, "file", "pipe"):
        return
    try:
        fsspec.get_filesystem_class(scheme)
    except ValueError:
        raise RemoteError(f"{url}: unknown URL scheme {scheme!r}") from None
    except ImportError:
        package = SCHEME_PACKAGES.get(scheme, f"the fsspec backend for {scheme}://")
        raise RemoteError(
            f"{url}: reading {scheme}:// needs {package}; pip install {package} "
            f"(or stream it with pipe:, e.g. pipe:aws s3 cp {url} -)"
        ) from None


def _transient(err: BaseException) -> bool:
    """Worth another try: not a missing, forbidden or malformed resource."""
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, ValueError)):
        return False
    status = getattr(err, "status", None) or getattr(err, "code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    return True


READ_AHEAD = 1 << 20  # bytes asked of an HTTP stream per read


class _StreamRaw(io.RawIOBase):
    """An fsspec HTTP stream as raw I/O, so `io.BufferedReader` can read it ahead: each of its
    `read`s is a round trip to fsspec's event-loop thread, and a tar reader asks for 10 KB at
    a time."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.stream.close()
        super().close()


def open_remote(url: str, retries: int | None = None, backoff_s: float | None = None) -> IO[bytes]:
    """A readable binary stream of `url` (fsspec), retried with back-off when transient
    (default RETRIES times, waiting BACKOFF_S, then twice as long each time)."""
    retries = RETRIES if retries is None else retries
    backoff_s = BACKOFF_S if backoff_s is None else backoff_s
    check_scheme(url)
    # http: stream the body instead of ranged requests (other schemes read in blocks)
    streaming = {"block_size": 0} if scheme_of(url) in ("http", "https") else {}
    for attempt in range(retries + 1):
        try:
            stream = fsspec.open(url, "rb", **streaming).open()
            if streaming:
                return io.BufferedReader(_StreamRaw(stream), buffer_size=READ_AHEAD)
            return stream
        except Exception as err:
            if attempt == retries or not _transient(err):
                kind = "not found" if isinstance(err, FileNotFoundError) else type(err).__name__
                tries = f" after {attempt + 1} tries" if attempt else ""
                raise RemoteError(f"{url}: cannot be opened{tries} ({kind}: {err})") from err
            wait = backoff_s * 2**attempt
            log.warning("%s: %s; retrying in %.1f s (%d/%d)", url, err, wait, attempt + 1, retries)
            time.sleep(wait)
    raise AssertionError("unreachable")


def open_shard(url: str) -> IO[bytes]:
    """A readable binary stream of a shard, wherever it is."""
    scheme = scheme_of(url)
    if scheme is None:
        return open(url, "rb")
    if scheme in ("pipe", "file"):
        return wds.gopen(url, "rb")
    return open_remote(url)


def read_text(url: str) -> str | None:
    """The text at a local path or URL (a manifest); None when it does not exist."""
    try:
        with open_shard(url) as f:
            return f.read().decode()
    except FileNotFoundError:
        return None
    except RemoteError as err:
        if isinstance(err.__cause__, FileNotFoundError):
            return None
        raise
