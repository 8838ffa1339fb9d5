"""Fetching inputs and storing outputs through real files and a real HTTP server."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from floe.pilot.staging import (
    StagingError,
    digest,
    fetch,
    kept_path,
    scratch_path,
    store,
    verify,
)


def test_inputs_come_from_file_urls_and_plain_paths(tmp_path):
    source = tmp_path / "source.txt"
    source.write_text("calibration")
    fetch(f"file://{source}", tmp_path / "scratch" / "a.txt")
    fetch(str(source), tmp_path / "scratch" / "deep" / "b.txt")
    assert (tmp_path / "scratch" / "a.txt").read_text() == "calibration"
    assert (tmp_path / "scratch" / "deep" / "b.txt").read_text() == "calibration"


def test_a_missing_input_names_the_url(tmp_path):
    with pytest.raises(StagingError, match=r"input file:///nowhere/x\.txt: cannot copy"):
        fetch("file:///nowhere/x.txt", tmp_path / "x.txt")


def test_checksums_are_verified_in_sha256_and_md5(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"payload")
    verify(path, "sha256:" + hashlib.sha256(b"payload").hexdigest(), "input f")
    verify(path, "md5:" + hashlib.md5(b"payload").hexdigest().upper(), "input f")
    with pytest.raises(StagingError, match="input f: sha256 checksum mismatch: expected 00"):
        verify(path, "sha256:" + "0" * 64, "input f")


def test_http_inputs_are_downloaded(tmp_path, file_server):
    (file_server.directory / "gen.py").write_text("print('hi')")
    fetch(f"{file_server.url}/gen.py", tmp_path / "gen.py")
    assert (tmp_path / "gen.py").read_text() == "print('hi')"


def test_http_not_found_fails_at_once(tmp_path, file_server):
    with pytest.raises(StagingError, match=r"/missing\.py: HTTP 404"):
        fetch(f"{file_server.url}/missing.py", tmp_path / "missing.py", retries=3)
    assert file_server.requests == ["GET /missing.py"]


def test_a_transient_http_failure_is_retried(tmp_path, file_server):
    (file_server.directory / "data.bin").write_bytes(b"\x00\x01")
    fetch(f"{file_server.url}/flaky/data.bin", tmp_path / "data.bin", retries=1)
    assert (tmp_path / "data.bin").read_bytes() == b"\x00\x01"
    assert file_server.requests.count("GET /flaky/data.bin") == 2


def test_an_unreachable_server_fails_after_its_retries(tmp_path):
    with pytest.raises(StagingError, match="after 2 tries"):
        fetch("http://127.0.0.1:9/x", tmp_path / "x", retries=1, timeout=2)


def test_outputs_are_copied_with_parent_directories_or_put_over_http(tmp_path, file_server):
    result = tmp_path / "result.i3"
    result.write_bytes(b"event data")
    store(result, f"file://{tmp_path}/archive/2026/result.i3")
    store(result, f"{file_server.url}/upload/result.i3")
    assert (tmp_path / "archive" / "2026" / "result.i3").read_bytes() == b"event data"
    assert (file_server.directory / "upload" / "result.i3").read_bytes() == b"event data"
    assert digest(result) == hashlib.sha256(b"event data").hexdigest()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_stored_output_has_the_mode_the_umask_gives_a_new_file(tmp_path, umask, mode):
    result = tmp_path / "result.i3"
    result.write_bytes(b"event data")
    result.chmod(0o600)  # the task's own file, whatever its mode, is not what decides
    previous = os.umask(umask)
    try:
        store(result, f"file://{tmp_path}/archive/result.i3")
        store(result, f"file://{tmp_path}/archive/result.i3")  # replacing one keeps it so
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "archive" / "result.i3").stat().st_mode) == mode
    assert os.listdir(tmp_path / "archive") == ["result.i3"]


def test_outputs_floe_run_keeps_get_a_file_each_inside_its_directory(tmp_path):
    urls = ["file:///data/a/gen.txt", "/data/a/gen.txt", "/data/x%41", "https://api/up?n=a.i3",
            "https://api/up?n=b.i3", "https://api/up", "https://h", "https://h/-",
            "https://h?x=1", "http://h/a b"]
    kept = [kept_path(tmp_path, url) for url in urls]
    assert kept[0] == kept[1] == tmp_path / "file" / "data" / "a" / "gen.txt"  # one file
    assert len(set(kept[1:])) == len(urls) - 1
    assert all(tmp_path in path.parents for path in kept)
    escaping = kept_path(tmp_path, "https://h/a/../../../etc/x")
    assert escaping == tmp_path / "https" / "h" / "etc" / "x"
    with pytest.raises(StagingError, match="must name a local path"):  # as production says
        kept_path(tmp_path, "file://otherhost/data/x")
    signed = [kept_path(tmp_path, f"https://s3/bucket/out.i3?X-Amz-Signature={n}{'f' * 300}")
              for n in range(2)]  # a presigned URL's query: too long for one file's name
    assert signed[0] != signed[1] and all(len(path.name) <= 200 for path in signed)
    for path in signed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("kept")


def test_unsupported_urls_are_refused(tmp_path):
    with pytest.raises(StagingError, match="unsupported URL"):
        fetch("gsiftp://host/x", tmp_path / "x")
    with pytest.raises(StagingError, match="must name a local path"):
        fetch("file://otherhost/x", tmp_path / "x")


def test_local_paths_stay_inside_the_scratch_directory(tmp_path):
    assert scratch_path(tmp_path, "out/a.txt") == tmp_path / "out" / "a.txt"
    for bad in ("../a.txt", "/etc/passwd", "x/../../a"):
        with pytest.raises(StagingError, match="relative to the task's scratch"):
            scratch_path(tmp_path, bad)
