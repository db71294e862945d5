"""ReplayAgent: feeds a folder of prepared train.py files, one per trial, for tests and audits.

Files are the folder's `*.py` files in natural sort order (`2_x.py` before `10_y.py`; zero-padded
names sort the same either way). A file's description is its first comment line if that reads
`# description: ...`, else the file name. When the folder is done, `propose` raises AgentExhausted.

Deliberate: files are passed on verbatim, even ones that do not parse. Replays exist to drive the
sandbox through known cases, a deliberately broken candidate (to exercise the crash path) included;
the sandbox, not the agent, decides what a candidate is worth. The folder is listed once, at
construction, so files added mid-run do not change the sequence being replayed.

Resume: the context's `trial_index` is the number of candidates the run already holds, one per file
replayed before, so a resumed run continues from the next file instead of replaying from the first.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

from harness.agents.base import AgentContext, AgentExhausted, AgentFatal, Proposal, Usage, raise_if_cancelled

logger = logging.getLogger(__name__)

_DESCRIPTION = re.compile(r"#\s*description:\s*(?P<text>.*\S)\s*", re.IGNORECASE)
DESCRIPTION_LIMIT = 200


def _natural_key(path: Path) -> list[tuple[int, int | str]]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", path.name) if part]


def description_of(path: Path, source: str) -> str:
    """The `# description:` first comment line of `source`, else the file name."""
    for line in source.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#!") or re.match(r"#.*coding[:=]", stripped):
            continue
        if stripped.startswith("#"):
            match = _DESCRIPTION.fullmatch(stripped)
            if match:
                return match["text"][:DESCRIPTION_LIMIT]
        break  # only the first comment line counts
    return path.name


class ReplayAgent:
    """Proposes the folder's files in order, then raises AgentExhausted."""

    name = "replay"

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise AgentFatal(f"replay folder {folder} does not exist or is not a folder")
        self.folder = folder
        self.files = sorted((p for p in folder.glob("*.py") if p.is_file()), key=_natural_key)
        if not self.files:
            raise AgentFatal(f"replay folder {folder} holds no *.py files to replay")
        self.position = 0
        logger.info("replaying %d files from %s", len(self.files), folder)

    @property
    def remaining(self) -> int:
        return len(self.files) - self.position

    def propose(self, ctx: AgentContext, cancel: threading.Event | None = None) -> Proposal:
        raise_if_cancelled(cancel, f"the proposal for trial {ctx.trial_index}")
        if ctx.trial_index > self.position:  # a resumed run: those files were played and recorded
            logger.info(
                "replay resumes at file %d (the run holds %d candidates)",
                ctx.trial_index + 1,
                ctx.trial_index,
            )
            self.position = min(ctx.trial_index, len(self.files))
        if self.position >= len(self.files):
            raise AgentExhausted(f"replay folder {self.folder} is done ({len(self.files)} files replayed)")
        path = self.files[self.position]
        self.position += 1
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AgentFatal(f"cannot read replay file {path}: {exc}") from exc
        description = description_of(path, source)
        logger.info(
            "replay %d/%d for trial %d: %s", self.position, len(self.files), ctx.trial_index, description
        )
        return Proposal(train_py=source, description=description, usage=Usage(model="replay"))
