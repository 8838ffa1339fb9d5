"""Where signing in may send the browser: only to a path of this server."""

from __future__ import annotations

import pytest

from floe.matchmaker.web.signin import safe_next


@pytest.mark.parametrize("target", [
    None, "", "https://evil.example/", "//evil.example", "/\t/evil.example", "/\n/evil.example",
    "/\\evil.example", "\\\\evil.example", "evil.example", "/ /evil.example", "/\x7f/x",
    "javascript:alert(1)",
])
def test_a_target_that_could_leave_the_server_goes_home(target):
    assert safe_next(target) == "/"


@pytest.mark.parametrize("target", ["/", "/datasets/3", "/tasks?state=failed&after=10",
                                    "/datasets/1#tasks"])
def test_a_path_of_this_server_is_kept(target):
    assert safe_next(target) == target
