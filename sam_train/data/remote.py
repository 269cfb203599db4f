"""Opening shards wherever they are: a local path, `pipe:COMMAND`, or any `scheme://` URL.

- Local paths and `file://` open directly.
- `pipe:` runs the command through webdataset's `gopen` (its output is the tar stream; a
  non-zero exit is an error when the stream is read).
- `http(s)://` is one plain streaming GET per shard (Python's urllib: no HEAD or range
  requests, proxies from `http_proxy` / `https_proxy`, redirects followed, `user:password@`
  as basic auth), read a megabyte at a time; a body cut short of its Content-Length is an
  error. This costs about a quarter of the CPU per shard of fsspec's aiohttp stream, whose
  every read is a round trip to its event-loop thread.
- Every other scheme goes through fsspec, which webdataset's own fsspec path and Lightning
  already depend on: `s3://` through s3fs, `gs://` through gcsfs, `az://` through adlfs, ...
  A scheme whose package is missing is refused in one line naming the package to install.
- Opening a remote shard is retried with exponential back-off on transient failures
  (connection errors, time-outs, HTTP 5xx / 429); a missing or forbidden shard is not retried.
  What cannot be opened in the end is raised with its URL; the shard reader counts it as a
  skipped shard and goes on.
"""

from __future__ import annotations

import base64
import http.client
import io
import logging
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import IO

import fsspec
import webdataset as wds

from sam_train.errors import UserError

log = logging.getLogger(__name__)

RETRIES = 4  # further attempts after the first failed open of a remote shard
BACKOFF_S = 1.0  # wait before the first retry; doubles each time (1, 2, 4, 8 s)
READ_AHEAD = 1 << 20  # bytes asked of an HTTP response per read (a tar reader asks 10 KB)
HTTP_TIMEOUT_S = 60.0  # connecting, and waiting for each read of the body
HTTP_SCHEMES = ("http", "https")
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
    if scheme in (None, "file", "pipe", *HTTP_SCHEMES):
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
    """Worth another try: not a missing, forbidden or malformed resource, nor a certificate
    that does not verify."""
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, ValueError)):
        return False
    if isinstance(getattr(err, "reason", None), ssl.SSLCertVerificationError):
        return False
    status = getattr(err, "status", None) or getattr(err, "code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    return True


class _HttpBody(io.RawIOBase):
    """An HTTP response body as raw I/O under `io.BufferedReader`; a connection closed before
    the promised Content-Length is an error (`http.client` would end the body quietly, and a
    tar cut at a member boundary would read as a shorter shard)."""

    def __init__(self, response: http.client.HTTPResponse, url: str) -> None:
        self.response, self.url = response, url

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.response.readinto(buffer)
        if not n and len(buffer) and self.response.length:
            raise OSError(f"{self.url}: connection closed, {self.response.length} bytes unread")
        return n

    def close(self) -> None:
        self.response.close()
        super().close()


def _http_request(url: str) -> urllib.request.Request:
    """A GET of `url`; `user:password@` in it becomes a basic Authorization header."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url)
    host = parts.netloc.rpartition("@")[2]
    plain = urllib.parse.urlunsplit(parts._replace(netloc=host))
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return urllib.request.Request(plain, headers={"Authorization": f"Basic {token}"})


def _open_http(url: str) -> IO[bytes]:
    """The body of one streaming GET (no HEAD, no ranges), read a megabyte at a time: fsspec's
    stream cost ~2 ms of CPU per shard in round trips to its event-loop thread. urllib takes
    proxies from the environment and follows redirects. 404 / 410 raise FileNotFoundError,
    401 / 403 PermissionError, other statuses HTTPError (its `code` says if it is transient)."""
    try:
        response = urllib.request.urlopen(_http_request(url), timeout=HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code in (404, 410):
            raise FileNotFoundError(f"HTTP {err.code}") from None
        if err.code in (401, 403):
            raise PermissionError(f"HTTP {err.code} {err.reason}") from None
        raise
    return io.BufferedReader(_HttpBody(response, url), buffer_size=READ_AHEAD)


def _open_fsspec(url: str) -> IO[bytes]:
    return fsspec.open(url, "rb").open()


def open_remote(url: str, retries: int | None = None, backoff_s: float | None = None) -> IO[bytes]:
    """A readable binary stream of `url` (http(s): one GET; other schemes: fsspec), retried
    with back-off when transient (default RETRIES times, waiting BACKOFF_S, then twice as
    long each time)."""
    retries = RETRIES if retries is None else retries
    backoff_s = BACKOFF_S if backoff_s is None else backoff_s
    check_scheme(url)
    opener = _open_http if scheme_of(url) in HTTP_SCHEMES else _open_fsspec
    for attempt in range(retries + 1):
        try:
            return opener(url)
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
