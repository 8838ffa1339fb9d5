"""How an ended attempt's report is kept: the stdout/stderr tails are capped in bytes of UTF-8
(`tail_bytes`), keeping the end of each stream and cutting between characters."""

from __future__ import annotations

from .test_report_ask import report


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
