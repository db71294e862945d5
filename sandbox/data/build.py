"""Build a profile's data folder: documents -> tokenizer -> token shards -> manifest.json (idempotent).

`prepare_data` is what `python prepare.py` (and `python -m sandbox.data`) runs; the harness calls it
before a run. Deliberate:
- Idempotent and tamper-evident: a folder whose manifest matches the expected identity and whose files
  all match their recorded SHA-256 is left alone; anything else is rebuilt to the same bytes (the
  manifest has no timestamp, so the same data gives the same manifest hash). The manifest is written
  last: no manifest means not complete.
- The tokenizer is trained on train documents only (byte-level BPE, GPT-4 style split, BOS id 0).
- One build per folder at a time (a file lock), and a folder holding the other profile's data is
  never overwritten.
- The unigram baseline is computed here, from train/, and recorded, so the EVAL container (no train/)
  reports it too.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import numpy as np
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

import prepare
from prepare import (
    BOS_ID,
    BOS_TOKEN,
    DATA_MANIFEST_FILE,
    TOKEN_BYTES_FILE,
    TOKENIZER_DIRNAME,
    TOKENIZER_FILE,
    TRAIN_DIRNAME,
    VAL_DIRNAME,
    DataIntegrityError,
    PrepareError,
    Profile,
)
from sandbox.data import download, tiny
from sandbox.incontainer.fileio import atomic_open, atomic_write, sha256_file

log = logging.getLogger(__name__)

# GPT-4 style split, digits in groups of 1-2 (as the reference).
SPLIT_PATTERN: Final = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
SHARD_TEMPLATE: Final = "shard_{:05d}.npy"
MANIFEST_VERSION: Final = 1
TOKENIZER_MAX_CHARS: Final = 1_000_000_000  # characters of train text the gpu tokenizer sees
TOKENIZER_DOC_CAP: Final = 10_000  # characters per document for tokenizer training


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, durable=False) as f:  # 0644: containers read data files as another uid
        np.save(f, array, allow_pickle=False)


# ---- Tokenizer ----------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Byte-level BPE with the GPT-4 style split; BOS is the only special token and gets id 0."""
    tok = HFTokenizer(models.BPE(byte_fallback=False, unk_token=None, fuse_unk=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern=Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS_TOKEN],
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.token_to_id(BOS_TOKEN) != BOS_ID:
        raise PrepareError(f"{BOS_TOKEN} got id {tok.token_to_id(BOS_TOKEN)}, expected {BOS_ID}")
    return tok


def _byte_decoder() -> dict[str, int]:
    # Inverse of GPT-2's bytes_to_unicode: the byte-level alphabet maps each byte to one character.
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def token_byte_lengths(tok: HFTokenizer, vocab_size: int) -> list[int]:
    """UTF-8 byte length of every token id in [0, vocab_size); special tokens and unused ids are 0."""
    decoder = _byte_decoder()
    specials = {BOS_TOKEN}
    lengths = [0] * vocab_size
    for token, idx in tok.get_vocab(with_added_tokens=True).items():
        if idx >= vocab_size:
            raise PrepareError(f"tokenizer id {idx} >= vocab_size {vocab_size}")
        if token in specials:
            continue
        if any(ch not in decoder for ch in token):
            raise PrepareError(f"token {token!r} is not byte-level")
        lengths[idx] = len(token)
    return lengths


# ---- Token shards, manifest, baseline -----------------------------------------------------------


def _token_dtype(vocab_size: int) -> type[np.unsignedinteger[Any]]:
    return np.uint16 if vocab_size <= 65_535 else np.uint32


def _encode_docs(tok: HFTokenizer, docs: Sequence[str], vocab_size: int, batch: int = 1024) -> np.ndarray:
    """One flat token stream: BOS, doc tokens, BOS, doc tokens, ..."""
    parts: list[np.ndarray] = []
    dtype = _token_dtype(vocab_size)
    bos = np.array([BOS_ID], dtype=dtype)
    for i in range(0, len(docs), batch):
        for enc in tok.encode_batch(list(docs[i : i + batch]), add_special_tokens=False):
            parts.append(bos)
            parts.append(np.asarray(enc.ids, dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _write_split(root: Path, split: str, streams: Iterable[np.ndarray]) -> None:
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("shard_*.npy"):
        stale.unlink()
    for i, stream in enumerate(streams):
        _atomic_save_npy(folder / SHARD_TEMPLATE.format(i), stream)


def _write_tokenizer(root: Path, tok: HFTokenizer, vocab_size: int) -> None:
    folder = root / TOKENIZER_DIRNAME
    atomic_write(folder / TOKENIZER_FILE, tok.to_str(pretty=False).encode("utf-8"))
    lengths = token_byte_lengths(tok, vocab_size)
    atomic_write(folder / TOKEN_BYTES_FILE, json.dumps(lengths).encode("utf-8"))


def _data_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for sub in (TRAIN_DIRNAME, VAL_DIRNAME):
        files += sorted((root / sub).glob("shard_*.npy"))
    files += [root / TOKENIZER_DIRNAME / TOKENIZER_FILE, root / TOKENIZER_DIRNAME / TOKEN_BYTES_FILE]
    return files


def _expected_identity(profile: Profile, num_shards: int | None) -> dict[str, Any]:
    ident: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "profile": profile.name,
        "profile_config": asdict(profile),
        "vocab_size": profile.vocab_size,
        "bos_token": BOS_TOKEN,
    }
    if profile.name == "tiny":
        ident["corpus_sha256"] = tiny.CORPUS_SHA256
        ident["train_sha256"] = tiny.CORPUS_TRAIN_SHA256
        ident["val_split"] = tiny.CORPUS_VAL_SPLIT
    else:
        ident["train_shards"] = num_shards
        ident["val_shard"] = download.VAL_SHARD
    return ident


def _manifest_profile(root: Path) -> str | None:
    try:
        name = prepare.read_manifest(root).get("profile")
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return name if isinstance(name, str) else None


def _up_to_date(root: Path, ident: dict[str, Any]) -> bool:
    try:
        manifest = prepare.read_manifest(root)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if any(manifest.get(k) != v for k, v in ident.items()):
        return False
    try:
        prepare.verify_data(root)
    except (DataIntegrityError, KeyError):
        return False
    listed = set(manifest["files"])
    return all(p.relative_to(root).as_posix() in listed for p in _data_files(root))


def unigram_bpb(root: Path, profile: Profile) -> float:
    """val_bpb on eval_rows of an add-one unigram model of train/: the baseline recorded in the manifest.

    p(token) = (count in train + 1) / (total + V') over the V' non-special tokens (add-one, so no target
    is impossible), scored on exactly the targets and byte lengths the metric uses.
    """
    token_bytes = prepare.load_token_bytes(root).numpy().astype(np.int64)
    vocab = len(token_bytes)
    counts = np.zeros(vocab, dtype=np.float64)
    for stream in prepare.load_split_tokens(TRAIN_DIRNAME, root):
        counts += np.bincount(np.asarray(stream), minlength=vocab)[:vocab]
    real = token_bytes > 0
    counts = np.where(real, counts + 1.0, 0.0)
    logp = np.full(vocab, -np.inf)
    logp[real] = np.log(counts[real] / counts.sum())
    rows = prepare.eval_rows(root, n_tokens=profile.eval_tokens, seq_len=profile.max_seq_len)
    targets = rows[:, 1:].numpy().reshape(-1)
    nbytes = token_bytes[targets]
    scored = nbytes > 0
    return float(-logp[targets[scored]].sum() / (math.log(2) * nbytes.sum()))


# ---- The tiny profile's val split ---------------------------------------------------------------


def _warn_if_public_val(root: Path) -> None:
    """Say so, loudly, when a tiny folder from before the secret val split is rebuilt (its migration)."""
    try:
        manifest = prepare.read_manifest(root)
    except (FileNotFoundError, json.JSONDecodeError):
        return
    if manifest.get("profile") == "tiny" and "val_split" not in manifest:
        log.warning(
            "%s: its val split is the old one, every %d-th document of the public corpus, which any candidate "
            "can regenerate from sandbox/data/corpus.py and memorise. Replacing it with a secret val split "
            "(the train split and tokenizer stay byte-identical). Scores recorded on the old split are not "
            "comparable one to one: the evaluator report's data hash changes with the split.",
            root,
            tiny.CORPUS_RETIRED_EVERY,
        )


def _secret_val_documents(root: Path, public: Sequence[str]) -> tuple[list[str], str]:
    """The folder's secret val documents and their SHA-256; draws and stores the seed on first use.

    A stored seed must still produce the val_sha256 stored beside it: a generator that drifted would
    otherwise change the val split (and the metric) silently on the next rebuild.
    """
    seed, recorded = tiny.read_val_secret(root)
    docs = tiny.generate_val(seed, public=public)
    sha = tiny.corpus_sha256(docs)
    if recorded is None:
        secret = {
            "val_seed": seed,
            "val_sha256": sha,
            "note": "host only: never mount or copy into a container",
        }
        atomic_write(root / tiny.VAL_SECRET_FILE, json.dumps(secret, indent=2).encode(), mode=0o600)
    elif sha != recorded:
        raise DataIntegrityError(
            f"the val seed in {root / tiny.VAL_SECRET_FILE} now generates val sha256 {sha}, not the recorded "
            f"{recorded}: the generator or its lexicon changed; this would silently change the metric"
        )
    return docs, sha


# ---- The pipeline -------------------------------------------------------------------------------


def _build_tiny(root: Path, prof: Profile) -> dict[str, Any]:
    public = tiny.generate_corpus()
    train_docs = tiny.train_documents(public)
    val_docs, val_sha = _secret_val_documents(root, public)
    log.info(
        "corpus: %d train documents (%d bytes), %d secret val documents (%d bytes), %d retired",
        len(train_docs),
        sum(len(d.encode()) for d in train_docs),
        len(val_docs),
        sum(len(d.encode()) for d in val_docs),
        len(public) - len(train_docs),
    )
    tok = train_tokenizer(train_docs, prof.vocab_size)  # never sees a val document
    _write_tokenizer(root, tok, prof.vocab_size)
    _write_split(root, TRAIN_DIRNAME, [_encode_docs(tok, train_docs, prof.vocab_size)])
    _write_split(root, VAL_DIRNAME, [_encode_docs(tok, val_docs, prof.vocab_size)])
    return {
        "corpus_documents": {
            "train": len(train_docs),
            "val": len(val_docs),
            "retired": len(public) - len(train_docs),
        },
        "val_sha256": val_sha,  # the split's identity; the seed itself stays in VAL_SECRET_FILE
    }


def _build_gpu(
    root: Path, prof: Profile, num_shards: int, url: str, **download_kwargs: Any
) -> dict[str, Any]:
    train_paths, val_path = download.download_shards(root, num_shards, url, **download_kwargs)
    source = {"base_url": url, "parquet_sha256": {p.name: sha256_file(p) for p in [*train_paths, val_path]}}

    def tokenizer_texts() -> Iterator[str]:
        n = 0
        for path in train_paths:
            for text in download.parquet_texts(path):
                doc = text[:TOKENIZER_DOC_CAP]
                n += len(doc)
                yield doc
                if n >= TOKENIZER_MAX_CHARS:
                    return

    tok = train_tokenizer(tokenizer_texts(), prof.vocab_size)
    _write_tokenizer(root, tok, prof.vocab_size)
    _write_split(
        root,
        TRAIN_DIRNAME,
        (_encode_docs(tok, list(download.parquet_texts(p)), prof.vocab_size) for p in train_paths),
    )
    _write_split(
        root, VAL_DIRNAME, [_encode_docs(tok, list(download.parquet_texts(val_path)), prof.vocab_size)]
    )
    return {"source": source}


def prepare_data(
    profile: Profile | str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    num_shards: int | None = None,
    base_url: str | None = None,
    **download_kwargs: Any,
) -> Path:
    """Build (or check) a profile's data folder; returns it. Idempotent: a second call only verifies."""
    from filelock import FileLock  # host-only dependency

    prof = prepare.get_profile(profile)
    root = Path(data_dir).expanduser() if data_dir is not None else prepare.data_dir(prof)
    if prof.name == "gpu":
        num_shards = download.DEFAULT_NUM_SHARDS if num_shards is None else num_shards
        num_shards = download.MAX_SHARD if num_shards == -1 else num_shards
        if not 1 <= num_shards <= download.MAX_SHARD:
            raise ValueError(f"num_shards must be in [1, {download.MAX_SHARD}] or -1 (all), got {num_shards}")
    elif num_shards is not None or base_url is not None:
        raise ValueError("--num-shards/--base-url apply to the gpu profile only")
    ident = _expected_identity(prof, num_shards)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".prepare.lock")):
        previous = _manifest_profile(root)
        if previous not in (None, prof.name):  # e.g. $AUTORESEARCH_DATA left pointing at the other profile
            raise PrepareError(
                f"{root} holds the {previous} profile's data; refusing to overwrite it with {prof.name}. "
                "Pass --data-dir (or set $AUTORESEARCH_DATA) to a folder for this profile."
            )
        if _up_to_date(root, ident):
            log.info("%s: up to date (profile %s, manifest and hashes verified)", root, prof.name)
            return root
        t0 = time.monotonic()
        if prof.name == "tiny":
            _warn_if_public_val(root)
        (root / DATA_MANIFEST_FILE).unlink(missing_ok=True)  # no manifest = not complete
        if prof.name == "tiny":
            extra = _build_tiny(root, prof)
        else:
            url = base_url or download.BASE_URL
            extra = _build_gpu(root, prof, num_shards or download.DEFAULT_NUM_SHARDS, url, **download_kwargs)
        # Recorded so the evaluator can report the baseline without mounting train/.
        extra["unigram_bpb"] = unigram_bpb(root, prof)
        files = {p.relative_to(root).as_posix(): sha256_file(p) for p in _data_files(root)}
        manifest = {**ident, **extra, "files": files}  # no timestamp: same data, same manifest hash
        atomic_write(root / DATA_MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True).encode())
        log.info("%s: prepared profile %s in %.1fs", root, prof.name, time.monotonic() - t0)
    return root


# ---- CLI (`python prepare.py` hands off here; so does `python -m sandbox.data`) -------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare a profile's data, tokenizer and token shards.")
    parser.add_argument("--profile", choices=sorted(prepare.PROFILES), default=prepare.PROFILE.name)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"default: ${prepare.ENV_DATA} or ~/.cache/autoresearch/<profile>",
    )
    parser.add_argument(
        "--num-shards",
        type=int,
        default=None,
        help=f"gpu: train shards to download (default {download.DEFAULT_NUM_SHARDS}, -1 = all)",
    )
    parser.add_argument(
        "--base-url", default=None, help=f"gpu: where the parquet shards live (default {download.BASE_URL})"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        root = prepare_data(args.profile, args.data_dir, num_shards=args.num_shards, base_url=args.base_url)
    except PrepareError as e:
        log.error("%s", e)
        return 1
    log.info("data ready at %s (unigram baseline val_bpb %.4f)", root, prepare.unigram_bpb(root))
    return 0
