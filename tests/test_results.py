"""One description of a Version's fields: to_dict()/from_dict() on Attempt, Version, Run."""

from __future__ import annotations

import json
from dataclasses import fields

from arboris_nb.decisions import Decision
from arboris_nb.results import (
    EDITOR_FIELDS,
    FINAL,
    VERSION_METRICS,
    Attempt,
    Run,
    Version,
)


def full_version() -> Version:
    """A finished version with every field away from its default."""
    return Version(
        index=2,
        status="ok",
        content="text",
        title="A title",
        summary="short",
        error="earlier error",
        error_type="ServerError",
        queued_at=0.5,
        started_at=1.0,
        first_token_at=1.5,
        finished_at=3.0,
        output_tokens=12,
        tokens_from_usage=True,
        input_tokens=40,
        cached_input_tokens=8,
        attempts=[
            Attempt(1, 1.0, 1.2, "StreamInterrupted", None, 0.3, 0.25, 40, None, 5, True),
            Attempt(
                2,
                1.5,
                3.0,
                input_tokens=40,
                cached_input_tokens=8,
                output_tokens=12,
                first_token_at=1.5,
            ),
            Attempt(2, 1.6, 2.9, "CancelledError", hedge=True, lost=True, output_tokens=9),
        ],
        key_id="sk-…wxyz",
        cached=True,
        partial="streamed so far",
        cancel_reason="surplus",
        hedged=True,
        hedge_won=True,
        notes="more rain; she hesitates at the door",
        edited=True,
        original_content="generated",
    )


def test_every_version_field_is_set_by_the_fixture() -> None:
    # So the round trips below cover a field added later (or this fixture must grow).
    default = Version(index=1)
    assert all(getattr(full_version(), f.name) != getattr(default, f.name) for f in fields(Version))


def test_a_version_survives_json_both_ways() -> None:
    version = full_version()
    text = json.dumps(version.to_dict())
    assert Version.from_dict(json.loads(text)) == version
    assert isinstance(version.to_dict()["attempts"][0], dict)


def test_editor_false_leaves_out_the_editors_fields() -> None:
    data = full_version().to_dict(editor=False)
    assert {"edited", "original_content"} == EDITOR_FIELDS
    assert EDITOR_FIELDS.isdisjoint(data)
    back = Version.from_dict(data)
    assert (back.edited, back.original_content, back.content) == (False, None, "text")


def test_metrics_are_added_for_reading_and_ignored_when_read_back() -> None:
    version = full_version()
    data = version.to_dict(metrics=True)
    assert {name: data[name] for name in VERSION_METRICS} == {
        "attempt_count": 2,  # the hedge duplicates attempt 2: it is not one
        "queue_wait_s": 0.5,
        "ttft_s": 0.0,  # the kept attempt started at 1.5, its first token too
        "duration_s": 2.0,
        "retry_wait_s": 0.3,
        "tokens_per_s": 8.0,
        "cost": None,  # no attempt has a price
        "wasted_tokens": 14,  # the cut attempt's 5 (estimated) and the losing hedge's 9
        "wasted_cost": None,
    }
    assert Version.from_dict(data) == version


def test_unknown_keys_from_a_newer_writer_are_ignored() -> None:
    data = {**full_version().to_dict(), "usage_cost_usd": 0.02}
    data["attempts"][0]["region"] = "eu"
    assert Version.from_dict(data) == full_version()


def test_a_dict_from_before_the_rename_reads_back() -> None:
    # Stored Redis records and exported JSON from earlier versions: "attempts" was the
    # count and "attempt_log" the list.
    old = full_version().to_dict(metrics=True)
    old["attempt_log"], old["attempts"] = old["attempts"], 2
    del old["attempt_count"]
    back = Version.from_dict(old)
    assert back == full_version()
    assert (back.attempt_count, [a.hedge for a in back.attempts]) == (2, [False, False, True])
    assert Version.from_dict({"index": 1, "attempts": 0}).attempts == []


def test_the_attempt_count_leaves_out_hedges() -> None:
    hedged = Version(1, attempts=[Attempt(1, 0.0), Attempt(1, 0.5, hedge=True)])
    assert hedged.attempt_count == 1
    assert Version(1).attempt_count == 0  # cached, or cancelled before it started


def test_a_run_round_trips_with_its_versions() -> None:
    run = Run(
        run_id="r1",
        versions=[full_version(), Version(index=3, status="cancelled")],
        parallel=False,
        max_parallel_requests="auto",
        project="p",
        chapter=4,
        model="m",
        created_at=1.0,
        elapsed_s=3.5,
        parent_run_id="r0",
        parent_index=3,
        keep=1,
        extra_versions=1,
        decisions=[
            Decision("notes", 1.0, 2, None, {"notes": "n"}),
            Decision("select", 2.0, 2, "r1-retry-1", {}),
        ],
        retries=[Run("r1-retry-1", [full_version()], parent_run_id="r1", parent_index=2)],
    )
    plain = json.loads(json.dumps(run.to_dict()))
    assert Run.from_dict(plain) == run
    shown = json.loads(json.dumps(run.to_dict(metrics=True)))
    assert (shown["mode"], shown["ok"], shown["cancelled"]) == ("serial", 1, 1)
    assert shown["versions"][0]["duration_s"] == 2.0
    assert Run.from_dict(shown) == run


def test_final_means_the_version_will_not_change_again_in_its_run() -> None:
    assert {"ok", "failed", "cancelled"} == FINAL
    assert [Version(1, status=s).done for s in ("queued", "running", "retrying")] == [False] * 3
