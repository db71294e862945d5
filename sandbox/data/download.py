"""The gpu profile's corpus over HTTP: retries, resume with Range, atomic rename, SHA-256 and parquet checks.

The shards are the reference's public corpus (karpathy/climbmix-400b-shuffle on HuggingFace) or a mirror
of it (`--base-url`). Deliberate:
- A file is only ever renamed into place once its bytes are verified: against `PINNED_SHA256`, else
  against the sha256 the server advertises (HuggingFace's LFS `X-Linked-Etag`), and its parquet footer.
- A body cut short keeps its `.part` and the next attempt resumes it with Range; a mismatch deletes it.
- tenacity (the retry policy) and pyarrow (the footer check) are imported lazily: neither is in the
  trainer image, which never downloads.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from prepare import DataIntegrityError, PrepareError
from sandbox.incontainer.fileio import sha256_file

log = logging.getLogger(__name__)

BASE_URL: Final = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
PARQUET_TEMPLATE: Final = "shard_{:05d}.parquet"
MAX_SHARD: Final = 6542  # the last shard is shard_06542.parquet
VAL_SHARD: Final = MAX_SHARD  # pinned validation shard, as the reference
DEFAULT_NUM_SHARDS: Final = 10
RAW_DIRNAME: Final = "raw"  # the downloaded parquet shards, under the data folder; never mounted
# SHA-256 of shards we have verified ourselves; others are checked against the server's LFS sha256.
PINNED_SHA256: Final[dict[str, str]] = {}

_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(PrepareError):
    """A shard could not be downloaded intact after every retry."""


class _ChecksumMismatch(Exception):
    """Internal: the bytes on disk are wrong; the .part was deleted and the download is retried."""


class _Interrupted(Exception):
    """Internal: the body ended early; the .part is kept and the next attempt resumes it with Range."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _remote_sha256(url: str, timeout: float) -> tuple[str | None, int | None]:
    """The sha256 and size the server advertises for a file, if any.

    HuggingFace answers a HEAD on a resolve URL with a redirect carrying X-Linked-Etag (the LFS sha256)
    and X-Linked-Size; we read them before following the redirect, as huggingface_hub does. A plain
    server's ETag counts only if it is a 64-hex sha256.
    """
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, method="HEAD")
    redirected = False
    try:
        with opener.open(request, timeout=timeout) as response:
            headers = response.headers
    except urllib.error.HTTPError as e:  # a 3xx lands here when redirects are not followed
        if e.code in (405, 501):  # a mirror without HEAD: nothing advertised
            return None, None
        if not 300 <= e.code < 400:
            raise
        headers, redirected = e.headers, True
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").strip()
    etag = etag.removeprefix("W/").strip('"').lower()
    size = headers.get("X-Linked-Size") or (None if redirected else headers.get("Content-Length"))
    return (etag if _SHA256_RE.match(etag) else None), (int(size) if size and size.isdigit() else None)


def check_parquet(path: Path) -> None:
    """Parquet footer integrity: magic bytes at both ends and a readable footer. Raises DataIntegrityError."""
    import pyarrow.parquet as pq  # lazy: not in the trainer image

    with path.open("rb") as f:
        head = f.read(4)
        f.seek(max(0, path.stat().st_size - 4))
        tail = f.read(4)
    if head != b"PAR1" or tail != b"PAR1" or path.stat().st_size < 12:
        raise DataIntegrityError(f"{path.name}: not a parquet file (bad magic bytes)")
    try:
        pq.read_metadata(path)
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid subclasses ValueError
        raise DataIntegrityError(f"{path.name}: unreadable parquet footer: {e}") from e


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in (408, 425, 429) or exc.code >= 500
    retry_on = (_ChecksumMismatch, _Interrupted, urllib.error.URLError, http.client.HTTPException, OSError)
    return isinstance(exc, retry_on)


def download_file(
    url: str,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    attempts: int = 5,
    timeout: float = 60.0,
    wait_s: float = 2.0,
    parquet: bool = True,
) -> Path:
    """Download url to dest: resumable (.part + Range), verified, atomically renamed.

    The SHA-256 comes from `expected_sha256` (a pinned manifest) or else from the server's LFS header;
    a parquet file must also have an intact footer. A body cut short is resumed from where it stopped;
    a mismatch deletes the .part and starts over. After `attempts` tries it raises DownloadError.
    """
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    def fetch(offset: int) -> None:
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:  # nothing left to send: the .part is complete
                return
            raise
        with response:
            if offset and response.status != 206:
                log.info("%s: server ignored Range, restarting from zero", dest.name)
                offset = 0
            length = response.headers.get("Content-Length")
            with part.open("ab" if offset else "wb") as f:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
        # http.client returns a short body silently when the peer closes early; count ourselves.
        if length is not None and part.stat().st_size < offset + int(length):
            raise _Interrupted(
                f"{dest.name}: connection closed at {part.stat().st_size} of {offset + int(length)} bytes"
            )

    def attempt() -> None:
        sha, size = (expected_sha256, None) if expected_sha256 else _remote_sha256(url, timeout)
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset > size:
            part.unlink()
            offset = 0
        if size is None or offset < size:
            fetch(offset)
        try:
            if size is not None and part.stat().st_size != size:
                raise DataIntegrityError(f"size {part.stat().st_size} != advertised {size}")
            got = sha256_file(part)
            if sha is not None and got != sha:
                raise DataIntegrityError(f"sha256 {got} != expected {sha}")
            if parquet:
                check_parquet(part)
        except DataIntegrityError as e:
            part.unlink(missing_ok=True)
            raise _ChecksumMismatch(f"{dest.name}: {e}") from e
        if sha is None:
            log.warning("%s: no sha256 pinned or advertised; only the parquet footer was checked", dest.name)
        os.replace(part, dest)

    try:
        for state in Retrying(
            stop=stop_after_attempt(attempts),
            reraise=True,
            wait=wait_exponential(multiplier=wait_s, max=60 * wait_s),
            retry=retry_if_exception(_retryable),
        ):
            with state:
                if state.retry_state.attempt_number > 1:
                    log.info("%s: attempt %d/%d", dest.name, state.retry_state.attempt_number, attempts)
                attempt()
    except _ChecksumMismatch as e:
        raise DownloadError(
            f"{e}; still corrupt after {attempts} attempts from {url}. "
            "Check the mirror (--base-url) or the network, then run prepare.py again."
        ) from e
    except (_Interrupted, urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise DownloadError(
            f"could not download {url} after {attempts} attempts: {e}. "
            "Run prepare.py again to resume (partial data is kept)."
        ) from e
    return dest


def download_shards(
    root: Path, num_shards: int, base_url: str = BASE_URL, *, workers: int = 8, **kwargs: Any
) -> tuple[list[Path], Path]:
    """Download the first `num_shards` train shards and the pinned val shard into root/raw/."""
    raw = root / RAW_DIRNAME
    train_ids = list(range(min(num_shards, MAX_SHARD)))
    ids = [*train_ids, VAL_SHARD]

    def fetch(i: int) -> Path:
        name = PARQUET_TEMPLATE.format(i)
        dest = raw / name
        if dest.exists():
            return dest
        log.info("downloading %s", name)
        return download_file(
            f"{base_url.rstrip('/')}/{name}", dest, expected_sha256=PINNED_SHA256.get(name), **kwargs
        )

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(ids)))) as pool:
        paths = list(pool.map(fetch, ids))
    return paths[:-1], paths[-1]


def parquet_texts(path: Path) -> Iterator[str]:
    """The `text` column of a parquet shard, one row group at a time."""
    import pyarrow.parquet as pq  # lazy: not in the trainer image

    pf = pq.ParquetFile(path)
    for rg in range(pf.num_row_groups):
        yield from pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
