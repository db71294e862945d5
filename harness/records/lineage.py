"""Git lineage of one run: every candidate train.py is a commit; keeps advance the run branch.

The repository is `run_dir/lineage`, a bare repository of its own holding one file, train.py, so
the user's checkout is never touched. Inspect it with
`git -C runs/<dir>/lineage log -p autoresearch/<run-tag>`.

Refs:
- `refs/heads/autoresearch/<run-tag>`: the run branch. Its root is the starting train.py; each
  keep moves it to the kept candidate. With one worker that is a fast-forward (a candidate's parent
  is the best at the time it was proposed); with several, a keep may land after another worker's
  keep that was not its parent, and the branch then leaves that one behind.
- `refs/autoresearch/superseded/<trial>`: the best that the keep of <trial> replaced without
  descending from it, so no kept commit ever becomes unreachable.
- `refs/autoresearch/pending/<trial>`: a candidate committed but not judged yet.
- `refs/autoresearch/discarded/<trial>`: discards and crashes, reachable forever (the reference
  loses them to `git reset`).
- `refs/autoresearch/orphaned/<trial>`: a commit whose trial never reached the ledger (the
  controller died, or the trial was abandoned).
- `refs/autoresearch/program`: with program evolution on (harness/program.py), the last evolved
  program.md, a chain of commits of that one file whose root is the human's program.md at the first
  step; each step's commit is named in its `program` ledger row.

Deliberate properties:
- Git is driven with plumbing (hash-object, mktree, commit-tree, update-ref): no index, no
  checkout, no working tree to get out of sync.
- Commits are authored deterministically: a fixed name and e-mail in GIT_* variables, the user's
  and the system's git configuration ignored, so no global config is needed and none leaks in.
- The ledger is the record. `reconcile` makes the refs agree with it after a crash, and logs
  every ref it moves.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from sandbox.constants import CANDIDATE_FILE, Decision

logger = logging.getLogger(__name__)

BRANCH_PREFIX = "autoresearch/"
PENDING = "refs/autoresearch/pending/"
DISCARDED = "refs/autoresearch/discarded/"
ORPHANED = "refs/autoresearch/orphaned/"
SUPERSEDED = "refs/autoresearch/superseded/"
PROGRAM_REF = "refs/autoresearch/program"
PROGRAM_FILE = "program.md"
AUTHOR_NAME = "autoresearch"
AUTHOR_EMAIL = "autoresearch@localhost"
ZERO_OID = "0" * 40
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class LineageError(Exception):
    """A git operation on the lineage failed (git missing, a ref moved under us, an object missing)."""


def git_env() -> dict[str, str]:
    """An environment in which git needs no configuration and reads none of the user's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_AUTHOR_NAME=AUTHOR_NAME,
        GIT_AUTHOR_EMAIL=AUTHOR_EMAIL,
        GIT_COMMITTER_NAME=AUTHOR_NAME,
        GIT_COMMITTER_EMAIL=AUTHOR_EMAIL,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
    )
    return env


def check_run_tag(tag: str) -> str:
    if not _TAG.match(tag) or ".." in tag or tag.endswith((".", ".lock")):
        raise ValueError(
            f"run tag {tag!r} cannot name a git branch: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit)"
        )
    return tag


class Lineage:
    """The run's git repository."""

    def __init__(self, path: Path, run_tag: str) -> None:
        self.path = path
        self.run_tag = check_run_tag(run_tag)
        self.branch_ref = f"refs/heads/{BRANCH_PREFIX}{run_tag}"

    @property
    def branch(self) -> str:
        return f"{BRANCH_PREFIX}{self.run_tag}"

    # ------------------------------------------------------------------ plumbing

    def _git(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        git = shutil.which("git")
        if git is None:
            raise LineageError("git is not installed; the lineage needs it (apt-get install git)")
        proc = subprocess.run(
            [git, f"--git-dir={self.path}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=git_env(),
            check=False,
        )
        if check and proc.returncode != 0:
            raise LineageError(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def init(self) -> None:
        """Create the bare repository with HEAD on the run branch (idempotent)."""
        if (self.path / "HEAD").exists():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._git("init", "--bare", "--quiet")
        self._git("symbolic-ref", "HEAD", self.branch_ref)
        # No hooks and no reflog surprises: this repository is written by the controller only.
        self._git("config", "core.hooksPath", os.devnull)
        self._git("config", "core.logAllRefUpdates", "always")
        self._git("config", "gc.auto", "0")

    def resolve(self, ref: str) -> str | None:
        out = self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False).strip()
        return out or None

    def head(self) -> str | None:
        """The run branch's commit, or None before the root commit."""
        return self.resolve(self.branch_ref)

    def refs(self, prefix: str) -> dict[str, str]:
        """Ref names under `prefix` (the part after it) to commit ids."""
        out = self._git("for-each-ref", "--format=%(refname) %(objectname)", prefix)
        result: dict[str, str] = {}
        for line in out.splitlines():
            name, oid = line.rsplit(" ", 1)
            result[name.removeprefix(prefix)] = oid
        return result

    def _update_ref(self, ref: str, new: str, old: str | None = None, *, why: str) -> None:
        args = ["update-ref", "-m", why, ref, new]
        if old is not None:
            args.append(old)
        self._git(*args)

    def _delete_ref(self, ref: str) -> None:
        self._git("update-ref", "-d", ref)

    def _commit(self, content: str, parents: Sequence[str], message: str) -> str:
        blob = self._git("hash-object", "-w", "--stdin", stdin=content).strip()
        tree = self._git("mktree", stdin=f"100644 blob {blob}\t{CANDIDATE_FILE}\n").strip()
        parent_args = [a for p in parents for a in ("-p", p)]
        return self._git("commit-tree", tree, *parent_args, stdin=message).strip()

    # ------------------------------------------------------------------ the run's operations

    def ensure_root(self, content: str) -> str:
        """The branch's root commit holding the starting train.py; created on the first call."""
        self.init()
        head = self.head()
        if head is not None:
            return self.root()
        commit = self._commit(content, (), f"baseline: the starting train.py\n\nRun: {self.run_tag}\n")
        self._update_ref(self.branch_ref, commit, ZERO_OID, why="autoresearch: root")
        logger.info("lineage: %s starts at %s", self.branch, commit[:12])
        return commit

    def root(self) -> str:
        out = self._git("rev-list", "--max-parents=0", self.branch_ref).split()
        if len(out) != 1:
            raise LineageError(f"{self.branch} has {len(out)} root commits; expected one")
        return out[0]

    def commit_candidate(self, content: str, *, parent: str, trial_id: str, description: str) -> str:
        """Commit a candidate as a child of `parent` and hold it under the pending ref."""
        message = f"{trial_id}: {description or '(no description)'}\n\nTrial: {trial_id}\n"
        commit = self._commit(content, (parent,), message)
        self._update_ref(PENDING + trial_id, commit, why=f"autoresearch: {trial_id} pending")
        return commit

    def keep(self, trial_id: str, commit: str, *, expected_head: str) -> None:
        """Advance the run branch to a kept candidate (compare-and-swap on the old head)."""
        if self._git("merge-base", expected_head, commit, check=False).strip() != expected_head:
            self._update_ref(SUPERSEDED + trial_id, expected_head, why=f"autoresearch: {trial_id} supersedes")
        self._update_ref(self.branch_ref, commit, expected_head, why=f"autoresearch: keep {trial_id}")
        self._drop_pending(trial_id)

    def discard(self, trial_id: str, commit: str) -> None:
        self._update_ref(DISCARDED + trial_id, commit, why=f"autoresearch: discard {trial_id}")
        self._drop_pending(trial_id)

    def orphan(self, trial_id: str, commit: str) -> None:
        self._update_ref(ORPHANED + trial_id, commit, why=f"autoresearch: orphan {trial_id}")
        self._drop_pending(trial_id)

    def _drop_pending(self, trial_id: str) -> None:
        if self.resolve(PENDING + trial_id) is not None:
            self._delete_ref(PENDING + trial_id)

    def read(self, commit: str) -> str:
        """train.py as of `commit`."""
        return self._git("cat-file", "blob", f"{commit}:{CANDIDATE_FILE}")

    # ------------------------------------------------------------------ program.md (opt-in evolution)

    def commit_program(self, content: str, *, parent: str | None, message: str) -> str:
        """Commit a program.md (a tree of that one file) as a child of `parent`; no ref moves."""
        blob = self._git("hash-object", "-w", "--stdin", stdin=content).strip()
        tree = self._git("mktree", stdin=f"100644 blob {blob}\t{PROGRAM_FILE}\n").strip()
        parent_args = ["-p", parent] if parent else []
        return self._git("commit-tree", tree, *parent_args, stdin=message).strip()

    def program_head(self) -> str | None:
        return self.resolve(PROGRAM_REF)

    def set_program(self, commit: str, *, why: str) -> None:
        """Point the program chain's ref at `commit` (the ledger's last applied program row)."""
        self._update_ref(PROGRAM_REF, commit, why=f"autoresearch: {why}")

    def read_program(self, commit: str) -> str:
        return self._git("cat-file", "blob", f"{commit}:{PROGRAM_FILE}")

    # ------------------------------------------------------------------ crash recovery

    def reconcile(
        self,
        *,
        best_commit: str,
        decided: Mapping[str, tuple[Decision, str | None]],
        in_progress: Collection[str],
    ) -> list[str]:
        """Make the refs agree with the ledger. Returns what was changed, one line per ref.

        `best_commit`: the branch head the ledger implies (the last keep, else the root).
        `decided`: trial id -> (decision, candidate commit) for every candidate row in the ledger.
        `in_progress`: trials whose folder will be re-run: their pending refs stay.
        """
        changes: list[str] = []
        if self.resolve(best_commit) is None:
            raise LineageError(f"the ledger's best commit {best_commit[:12]} is missing from {self.path}")
        head = self.head()
        if head != best_commit:
            self._update_ref(
                self.branch_ref, best_commit, head, why="autoresearch: reconcile with the ledger"
            )
            changes.append(
                f"{self.branch}: {head and head[:12]} -> {best_commit[:12]} (as the ledger records)"
            )
        for trial_id, commit in self.refs(PENDING).items():
            if trial_id in decided:
                decision, _ = decided[trial_id]
                if decision is not Decision.KEEP:
                    self.discard(trial_id, commit)
                    changes.append(f"{trial_id}: pending -> discarded (recorded as {decision})")
                else:
                    self._drop_pending(trial_id)
                    changes.append(f"{trial_id}: pending ref dropped (kept on the branch)")
            elif trial_id not in in_progress:
                self.orphan(trial_id, commit)
                changes.append(f"{trial_id}: pending -> orphaned (no ledger row)")
        discarded = self.refs(DISCARDED)
        for trial_id, (decision, recorded) in decided.items():
            if recorded is None:  # a canary: no commit, no ref (callers pass candidates only)
                continue
            if decision is not Decision.KEEP and trial_id not in discarded and self.resolve(recorded):
                self._update_ref(DISCARDED + trial_id, recorded, why=f"autoresearch: discard {trial_id}")
                changes.append(f"{trial_id}: discarded ref restored")
        for line in changes:
            logger.warning("lineage: %s", line)
        return changes
