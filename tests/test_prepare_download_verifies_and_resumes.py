"""Shard downloads are verified, resumable and atomic, and the gpu profile prepares from them.

An overnight run trusts data fetched over a network that can cut connections or serve wrong bytes.
Against a local HTTP server (127.0.0.1 only) that behaves like HuggingFace (HEAD answers a redirect
carrying X-Linked-Etag/X-Linked-Size, GET redirects to the blob, Range is honoured) these tests check
that: a clean download lands intact with no .part left; a body cut mid-way is resumed with a Range
request from the exact byte it stopped at (also a .part left by a killed run); a corrupted body is
discarded and fetched again; bytes that stay wrong, a broken parquet footer, a pinned SHA-256 that
does not match and a 404 all end in DownloadError without a file in place; and that the gpu profile's
prepare() builds train/, val/ (the pinned last shard) and the tokenizer from parquet shards, then is
a no-op that makes no request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import prepare
from sandbox.constants import DATA_MANIFEST_FILE, TRAIN_DIRNAME, VAL_DIRNAME
from sandbox.data import download, tiny
from sandbox.data.build import prepare_data

pa = pytest.importorskip("pyarrow", reason="pyarrow reads the gpu profile's parquet shards")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow reads the gpu profile's parquet shards")

FAST = {"wait_s": 0.0, "timeout": 10.0}


@dataclass
class Blob:
    data: bytes
    advertise_sha: bool = True  # send X-Linked-Etag like HuggingFace does for LFS files
    corrupt_gets: int = 0  # serve flipped bytes on this many full GETs
    cut_gets: int = 0  # close the connection half-way through this many full GETs


@dataclass
class FakeHub:
    url: str
    files: dict[str, Blob] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)

    def gets(self, name: str) -> list[str | None]:
        return [rng for method, path, rng in self.requests if method == "GET" and path == f"/blob/{name}"]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            pass

        def _blob(self, name: str) -> Blob | None:
            blob = hub.files.get(name)
            if blob is None:
                self.send_error(404)
            return blob

        def do_HEAD(self) -> None:
            hub.requests.append(("HEAD", self.path, self.headers.get("Range")))
            name = self.path.lstrip("/")
            if (blob := self._blob(name)) is None:
                return
            self.send_response(302)
            self.send_header("Location", f"/blob/{name}")
            if blob.advertise_sha:
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(blob.data).hexdigest()}"')
                self.send_header("X-Linked-Size", str(len(blob.data)))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            hub.requests.append(("GET", self.path, rng))
            if not self.path.startswith("/blob/"):
                name = self.path.lstrip("/")
                if self._blob(name) is not None:
                    self.send_response(302)
                    self.send_header("Location", f"/blob/{name}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                return
            if (blob := self._blob(self.path.removeprefix("/blob/"))) is None:
                return
            data = blob.data
            if rng is None:
                if blob.corrupt_gets:
                    blob.corrupt_gets -= 1
                    mid = len(data) // 2
                    data = data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :]
                self.send_response(200)
                start = 0
            else:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if rng is None and blob.cut_gets:
                blob.cut_gets -= 1
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    fake = FakeHub(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(fake)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _parquet(texts: list[str]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf, row_group_size=16)
    return buf.getvalue()


@pytest.fixture(scope="module")
def shard_texts() -> list[list[str]]:
    docs = tiny.generate_corpus(target_bytes=120_000)
    return [docs[0::3], docs[1::3], docs[2::3]]


def test_clean_download_is_verified_and_atomic(hub: FakeHub, tmp_path: Path, shard_texts) -> None:
    data = _parquet(shard_texts[0])
    hub.files["shard_00000.parquet"] = Blob(data)
    dest = tmp_path / "shard_00000.parquet"

    download.download_file(f"{hub.url}/shard_00000.parquet", dest, **FAST)

    assert dest.read_bytes() == data
    assert not list(tmp_path.glob("*.part"))
    assert ("HEAD", "/shard_00000.parquet", None) in hub.requests
    assert hub.gets("shard_00000.parquet") == [None]


def test_interrupted_download_resumes_with_range(hub: FakeHub, tmp_path: Path, shard_texts) -> None:
    data = _parquet(shard_texts[0])
    hub.files["s.parquet"] = Blob(data, cut_gets=1)
    dest = tmp_path / "s.parquet"

    download.download_file(f"{hub.url}/s.parquet", dest, **FAST)

    assert dest.read_bytes() == data
    assert hub.gets("s.parquet") == [None, f"bytes={len(data) // 2}-"]


def test_part_file_left_by_a_killed_run_is_resumed(hub: FakeHub, tmp_path: Path, shard_texts) -> None:
    data = _parquet(shard_texts[1])
    hub.files["s.parquet"] = Blob(data)
    dest = tmp_path / "s.parquet"
    (tmp_path / "s.parquet.part").write_bytes(data[:1000])

    download.download_file(f"{hub.url}/s.parquet", dest, **FAST)

    assert dest.read_bytes() == data
    assert hub.gets("s.parquet") == ["bytes=1000-"]


def test_corrupted_body_is_discarded_and_fetched_again(hub: FakeHub, tmp_path: Path, shard_texts) -> None:
    data = _parquet(shard_texts[0])
    hub.files["s.parquet"] = Blob(data, corrupt_gets=1)
    dest = tmp_path / "s.parquet"

    download.download_file(f"{hub.url}/s.parquet", dest, **FAST)

    assert dest.read_bytes() == data
    assert hub.gets("s.parquet") == [None, None]  # started over, not resumed onto bad bytes


def test_bytes_that_stay_wrong_fail_with_download_error(hub: FakeHub, tmp_path: Path, shard_texts) -> None:
    hub.files["s.parquet"] = Blob(_parquet(shard_texts[0]), corrupt_gets=100)
    dest = tmp_path / "s.parquet"

    with pytest.raises(download.DownloadError, match="sha256"):
        download.download_file(f"{hub.url}/s.parquet", dest, attempts=3, **FAST)

    assert len(hub.gets("s.parquet")) == 3
    assert not dest.exists()
    assert not list(tmp_path.glob("*.part"))


def test_broken_parquet_footer_fails_without_a_sha_to_check(
    hub: FakeHub, tmp_path: Path, shard_texts
) -> None:
    good = _parquet(shard_texts[0])
    broken = good[: len(good) // 2] + good[-8:]  # footer length and magic, no footer
    hub.files["s.parquet"] = Blob(broken, advertise_sha=False)
    dest = tmp_path / "s.parquet"

    with pytest.raises(download.DownloadError, match="parquet"):
        download.download_file(f"{hub.url}/s.parquet", dest, attempts=2, **FAST)
    assert not dest.exists()


def test_pinned_sha256_overrides_the_server(hub: FakeHub, tmp_path: Path, shard_texts) -> None:
    hub.files["s.parquet"] = Blob(_parquet(shard_texts[0]))
    dest = tmp_path / "s.parquet"

    with pytest.raises(download.DownloadError, match="sha256"):
        download.download_file(f"{hub.url}/s.parquet", dest, expected_sha256="ab" * 32, attempts=2, **FAST)

    assert not [r for r in hub.requests if r[0] == "HEAD"]  # the pin is trusted over the server
    assert not dest.exists()


def test_missing_file_fails_at_once(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(download.DownloadError, match="404"):
        download.download_file(f"{hub.url}/nope.parquet", tmp_path / "nope.parquet", attempts=5, **FAST)
    assert len(hub.requests) == 1  # a 404 is not retried


def test_gpu_profile_prepares_from_shards_and_then_is_a_no_op(
    hub: FakeHub, tmp_path: Path, shard_texts
) -> None:
    train_a, train_b, val = shard_texts
    hub.files["shard_00000.parquet"] = Blob(_parquet(train_a))
    hub.files["shard_00001.parquet"] = Blob(_parquet(train_b), cut_gets=1)
    hub.files[f"shard_{download.VAL_SHARD:05d}.parquet"] = Blob(_parquet(val))
    root = tmp_path / "gpu"

    # The real profile scores ~20M tokens: these small shards cannot fill them, and prepare says so.
    with pytest.raises(prepare.DataIntegrityError, match="val split"):
        prepare_data("gpu", root, num_shards=2, base_url=hub.url, **FAST)
    assert not (root / DATA_MANIFEST_FILE).exists()
    downloads = len(hub.requests)

    # A gpu profile scaled down to the fixture (same code path); the shards already on disk are reused.
    profile = dataclasses.replace(prepare.PROFILES["gpu"], max_seq_len=64, eval_tokens=64 * 32)
    prepare_data(profile, root, num_shards=2, base_url=hub.url, **FAST)
    assert len(hub.requests) == downloads

    manifest = prepare.read_manifest(root)
    assert manifest["profile"] == "gpu" and manifest["train_shards"] == 2
    assert 0.0 < manifest["unigram_bpb"] == prepare.unigram_bpb(root)
    assert manifest["vocab_size"] == prepare.PROFILES["gpu"].vocab_size
    assert len(list((root / TRAIN_DIRNAME).glob("shard_*.npy"))) == 2
    tok = prepare.load_tokenizer(root)
    [val_stream] = prepare.load_split_tokens(VAL_DIRNAME, root)
    bos = np.flatnonzero(np.asarray(val_stream) == prepare.BOS_ID)
    decoded = [
        tok.decode(val_stream[a + 1 : b].tolist())
        for a, b in zip(bos, [*bos[1:], len(val_stream)], strict=True)
    ]
    assert decoded == val
    assert prepare.load_token_bytes(root).shape == (prepare.PROFILES["gpu"].vocab_size,)

    seen = len(hub.requests)
    manifest_bytes = (root / DATA_MANIFEST_FILE).read_bytes()
    prepare_data(profile, root, num_shards=2, base_url=hub.url, **FAST)
    assert len(hub.requests) == seen
    assert (root / DATA_MANIFEST_FILE).read_bytes() == manifest_bytes
