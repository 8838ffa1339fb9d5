"""Ready tasks that may run at a site but fit none of its pilot shapes are named by the factory,
with the reason shape by shape, instead of the site standing idle in silence: a warning when
they are all the work there is, said again only when it changes or after a while. With a real
matchmaker; no pilot is started, since none could run them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tests.pilot.live import LiveMatchmaker

from .conftest import SHAPE, dag_dataset, site_document


def test_tasks_longer_than_every_shape_are_named_and_no_pilot_is_submitted_for_them(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, "floe.factory")
    long = dag_dataset(3)
    for task in long["tasks"]:
        task["requirements"]["walltime"] = "1h"
    matchmaker.submit(long)
    site = make_runner(site_document(matchmaker, tmp_path / "factory",
                                     shapes=[dict(SHAPE, walltime="30m")]))
    for _ in range(3):
        assert site.cycle().submit == {"small": 0}
    said = [r for r in caplog.records if "fit none of its pilot shapes" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"   # said once, not every cycle
    assert said[0].getMessage() == (
        "site site-a: 3 ready tasks that may run here fit none of its pilot shapes (3 tasks: "
        "shape small: needs 1h walltime, the shape has 30m); add a shape that holds them, or "
        "ask their owners to change their requirements")
    status = json.loads((tmp_path / "factory" / "site-a" / "status.json").read_text())
    assert status["unfit"]["tasks"] == 3

    # Work the site can serve alongside: the unfit tasks are still named, as information.
    caplog.clear()
    matchmaker.submit(dag_dataset(1))
    assert site.cycle().submit == {"small": 1}
    said = [r for r in caplog.records if "fit none of its pilot shapes" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "INFO"
