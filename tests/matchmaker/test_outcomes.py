"""How an ended attempt's report is kept: the stdout/stderr tails are capped in bytes of UTF-8
(`tail_bytes`), keeping the end of each stream and cutting between characters."""

from __future__ import annotations

import pytest

from config.protocol import utf8_tail

from .test_report_ask import report

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


async def test_reported_tails_are_stored_capped_in_utf8_bytes_keeping_their_end(world):
    cap = world.engine.settings.tail_bytes
    over = "start\n" + "€" * (cap // 3) + "the end\n"  # 3-byte characters, over the cap
    exact = "é" * (cap // 2)  # exactly at the cap, though longer than cap / 4 characters
    _, given = await world.ask()
    attempt = given["attempt"]
    status, answer = await report(world, attempt, {"exit_code": 0, "stdout_tail": over,
                                                   "stderr_tail": exact})
    assert status == 200, answer

    status, stored = await world.api.call("GET", f"/api/v1/attempts/{attempt['id']}",
                                          world.owner)
    assert status == 200, stored
    # As many whole euro signs as fit before the last line: none is cut in two.
    assert stored["stdout_tail"] == "€" * ((cap - len("the end\n")) // 3) + "the end\n"
    assert stored["stderr_tail"] == exact
