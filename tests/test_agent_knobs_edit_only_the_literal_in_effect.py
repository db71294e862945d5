"""Knob discovery finds the literal that sets a hyperparameter for the profile, and edits only it.

If the wrong literal were edited (the gpu value during a tiny run, a shadowed default, a name a loop
or a function rebinds), a trial would test nothing while its description claimed a change. If a span
were off (AST columns are UTF-8 bytes, not characters), an edit would corrupt the line around it.
"""

from __future__ import annotations

import textwrap

import pytest

from harness.agents.knobs import apply_edits, find_knobs, format_number


def knobs_by_name(source: str, profile: str = "tiny") -> dict[str, object]:
    return {k.name: k.value for k in find_knobs(textwrap.dedent(source), profile)}


def test_the_assignment_in_effect_for_the_profile_wins() -> None:
    source = """\
        import os
        TINY = PROFILE.name == "tiny"
        BIG = not TINY
        DEPTH = 8
        if PROFILE.name in ("tiny", "cpu"):
            DEPTH = 3
        WIDTH = 64 if BIG else 32
        HEADS = {"tiny": 2, "gpu": 8}[PROFILE.name]
        if os.environ.get("AUTORESEARCH_PROFILE") != "tiny":
            LR = 0.1
        else:
            LR = 0.2
        """

    assert knobs_by_name(source, "tiny") == {"DEPTH": 3, "WIDTH": 32, "HEADS": 2, "LR": 0.2}
    assert knobs_by_name(source, "gpu") == {"DEPTH": 8, "WIDTH": 64, "HEADS": 8, "LR": 0.1}


def test_names_whose_value_in_effect_is_uncertain_are_not_knobs() -> None:
    source = """\
        A = 1
        B = 2
        C = 3
        D = 4
        E = 5
        F = 6
        if device == "cuda":
            A = 10
        for _ in range(2):
            B = 20
        C += 1
        def bump():
            global D
            D = 40
        try:
            E = 50
        except ValueError:
            pass
        F = int("6")
        G = (0.9, "adam", 7)
        """

    assert knobs_by_name(source) == {"G[0]": 0.9, "G[2]": 7}


def test_an_edit_replaces_exactly_the_literal_even_after_non_ascii_text() -> None:
    source = 'S = "ééé"; LR = 0.5  # η, the rate\nN = 2**12  # tokens\n'
    knobs = {k.name: k for k in find_knobs(source, "tiny")}

    assert knobs["LR"].text == "0.5" and knobs["N"].text == "2**12"
    edited = apply_edits(
        source, [(knobs["LR"], format_number(0.75, "0.5")), (knobs["N"], format_number(8192, "2**12"))]
    )

    assert edited == 'S = "ééé"; LR = 0.75  # η, the rate\nN = 2**13  # tokens\n'


@pytest.mark.parametrize(
    ("value", "like", "expected"),
    [
        (2**20, "2**19", "2**20"),
        (3 * 2**18, "2**19", "786432"),
        (1_500, "1_000", "1_500"),
        (0.00045, "3e-4", "4.5e-4"),
        (0.06, "0.04", "0.06"),
        (0.1, "0", "0.1"),
        (24, "16", "24"),
    ],
)
def test_new_values_are_written_in_the_style_of_the_old_literal(
    value: float, like: str, expected: str
) -> None:
    assert format_number(value, like) == expected


def test_an_edit_refuses_a_source_that_changed_since_discovery() -> None:
    (knob,) = find_knobs("LR = 0.5\n", "tiny")

    with pytest.raises(ValueError, match="changed"):
        apply_edits("LR = 0.6\n", [(knob, "0.7")])
