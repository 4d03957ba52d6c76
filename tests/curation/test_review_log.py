"""The review decision log: durable appends, later lines win per clip, a torn last line is cut."""

from __future__ import annotations

import pytest

from curation.errors import InputError
from curation.review_log import REVIEW_FILE, Review, append_action, read_reviews


def test_later_actions_win_per_clip_and_kind(tmp_path):
    append_action(tmp_path, "a", "reject", time="t1")
    append_action(tmp_path, "a", "caption", "<img src=x onerror=alert(1)>", time="t2")
    append_action(tmp_path, "b", "accept", time="t3")
    append_action(tmp_path, "a", "accept", time="t4")
    append_action(tmp_path, "b", "reset", time="t5")
    reviews = read_reviews(tmp_path)
    assert reviews["a"] == Review("accepted", "<img src=x onerror=alert(1)>", "t4", "t2")
    assert reviews["b"] == Review(None, None, "t5", None)
    assert len((tmp_path / REVIEW_FILE).read_text().splitlines()) == 5  # every action stays in the log


def test_a_torn_last_line_is_cut_and_bad_lines_are_named(tmp_path):
    append_action(tmp_path, "a", "reject")
    with open(tmp_path / REVIEW_FILE, "ab") as fh:
        fh.write(b'{"id": "b", "act')  # a writer killed mid-line
    assert set(read_reviews(tmp_path)) == {"a"}
    assert (tmp_path / REVIEW_FILE).read_bytes().endswith(b"\n")
    with open(tmp_path / REVIEW_FILE, "a") as fh:
        fh.write('{"id": "c", "action": "delete"}\n')
    with pytest.raises(InputError, match=r"review.jsonl:2: unknown review action 'delete'"):
        read_reviews(tmp_path)


@pytest.mark.parametrize("args", [("a", "keep"), ("", "accept"), ("a", "caption")])
def test_bad_actions_are_refused(tmp_path, args):
    with pytest.raises(InputError):
        append_action(tmp_path, *args)
    assert not (tmp_path / REVIEW_FILE).exists()
