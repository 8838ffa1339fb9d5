"""The protocol's facts: the UTF-8 tail cut that pilot and matchmaker share (the end of a
stream, capped in bytes, cut between characters), and the batch systems floe knows, which the
plugins' registry, the factory's settings and the pilot's detection all use."""

from __future__ import annotations

import pytest

from floe.config import factory
from floe.config.protocol import BATCH_SYSTEMS, cut_utf8, utf8_tail
from floe.plugins import SYSTEMS

CAP = 1024


def longest_fitting_suffix(text: str, limit: int) -> str:
    """The reference answer, one character at a time."""
    kept = ""
    for character in reversed(text):
        if len((character + kept).encode()) > limit:
            break
        kept = character + kept
    return kept


@pytest.mark.parametrize("text", [
    "é" * (CAP // 2),  # exactly at the cap, 2 bytes a character
    "x" * CAP,  # exactly at the cap, 1 byte a character
    "x" + "é" * (CAP // 2),  # one byte over: the leading ASCII character goes
    "€" * 342,  # 1026 bytes: the cut falls inside a 3-byte character
    "😀" * 257,  # 1028 bytes: the cut falls after the first byte of a 4-byte character
    "a€😀é\n" * 500,  # mixed widths, far over the cap
    "log line\n" * 50,  # short: under a quarter of the cap in characters
], ids=["at-cap-2-byte", "at-cap-ascii", "one-byte-over", "cut-in-3-byte", "cut-in-4-byte",
        "mixed-far-over", "short"])
def test_a_tail_is_the_longest_end_of_the_text_that_fits_the_cap_in_utf8(text: str) -> None:
    tail = utf8_tail(text, CAP)
    assert len(tail.encode()) <= CAP
    assert text.endswith(tail)
    assert tail == longest_fitting_suffix(text, CAP)


def test_a_tail_at_or_under_the_cap_is_kept_whole_and_one_over_loses_its_first_character():
    assert utf8_tail("é" * (CAP // 2), CAP) == "é" * (CAP // 2)
    assert utf8_tail("x" + "é" * (CAP // 2), CAP) == "é" * (CAP // 2)
    assert utf8_tail("€" * 342, CAP) == "€" * 341  # 1,023 bytes: the split character goes


def test_a_lone_surrogate_in_a_report_does_not_fail_the_cut():
    # JSON lets a report carry "\ud800"; cutting its tail must not raise.
    assert utf8_tail("\ud800" + "x" * (2 * CAP), CAP) == "x" * CAP


def test_a_cut_through_a_character_leaves_what_is_left_of_it_out():
    data = "a€b".encode()  # € is 3 bytes
    assert cut_utf8(data[2:], cut=True) == "b"
    assert cut_utf8(data, cut=False) == "a€b"
    assert cut_utf8(b"", cut=True) == ""


def test_every_batch_system_has_one_plugin_and_the_factory_offers_exactly_them():
    assert set(SYSTEMS) == set(BATCH_SYSTEMS)
    assert factory.SITE_SCHEMA.fields["plugin"].kind.values == BATCH_SYSTEMS


@pytest.mark.parametrize("env", [{"SLURM_JOB_ID": "7"}, {"PBS_JOBID": "7.server"},
                                 {"JOB_ID": "7", "SGE_ROOT": "/sge"},
                                 {"_CONDOR_MACHINE_AD": "/nonexistent"}])
def test_the_batch_system_a_pilot_detects_is_one_floe_knows(env):
    from floe.pilot.slot import detect_batch

    assert detect_batch(env)[0] in BATCH_SYSTEMS
