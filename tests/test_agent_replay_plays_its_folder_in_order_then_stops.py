"""The replay agent proposes its folder's files verbatim, in natural order, then says it is exhausted.

Replays drive audits and end-to-end tests through known candidates, so the order must be the one the
file names say (`2_` before `10_`), each file must arrive byte for byte (a deliberately broken one
included), its description must come from its `# description:` line or its name, and the end of the
folder must be a distinct AgentExhausted, raised again on every later call, never a silent repeat.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.agents import AgentContext, AgentError, AgentExhausted, AgentFatal, AgentSettings, make_agent
from harness.agents.replay import ReplayAgent


def context(index: int) -> AgentContext:
    return AgentContext(program="", train_py="BASE = 1\n", trial_index=index)


def test_files_are_replayed_verbatim_in_natural_order_then_exhausted(tmp_path: Path) -> None:
    files = {
        "10_last.py": "# description: raise depth to 10\nDEPTH = 10\n",
        "2_second.py": "#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n# description:   wider model  \nN = 2\n",
        "1_first.py": '"""docstring first"""\n# description: not the first comment line\nX = 1\n',
        "3_broken.py": "# just a comment\ndef broken(:\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "notes.txt").write_text("not a candidate")
    agent = make_agent("replay", AgentSettings(kind="replay", replay_dir=tmp_path))

    proposals = [agent.propose(context(i)) for i in range(4)]

    order = ["1_first.py", "2_second.py", "3_broken.py", "10_last.py"]
    assert [p.train_py for p in proposals] == [files[name] for name in order]
    assert [p.description for p in proposals] == [
        "1_first.py",
        "wider model",
        "3_broken.py",
        "raise depth to 10",
    ]
    for _ in range(2):
        with pytest.raises(AgentExhausted, match="4 files"):
            agent.propose(context(4))
    assert issubclass(AgentExhausted, AgentError)


def test_a_missing_or_empty_folder_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(AgentFatal, match="does not exist"):
        ReplayAgent(tmp_path / "absent")
    with pytest.raises(AgentFatal, match=r"no \*\.py files"):
        ReplayAgent(tmp_path)


def test_a_file_added_after_the_start_is_not_replayed(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("A = 1\n")
    agent = ReplayAgent(tmp_path)
    (tmp_path / "b.py").write_text("B = 2\n")

    assert agent.propose(context(0)).train_py == "A = 1\n"
    with pytest.raises(AgentExhausted):
        agent.propose(context(1))


def test_a_resumed_run_continues_after_the_files_it_already_recorded(tmp_path: Path) -> None:
    for i in range(1, 5):
        (tmp_path / f"{i}_step.py").write_text(f"STEP = {i}\n")
    agent = ReplayAgent(tmp_path)  # a fresh agent, as after a restart; the run holds 2 candidates

    resumed = [agent.propose(context(i)).train_py for i in (2, 3)]

    assert resumed == ["STEP = 3\n", "STEP = 4\n"]
    with pytest.raises(AgentExhausted):
        agent.propose(context(4))
