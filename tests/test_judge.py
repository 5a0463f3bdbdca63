"""Evaluate (issue #13 item 3): the judge reads the versions with the chapter's context and
the editor's criteria, all at once or pairwise in both orders; what it was asked and
answered is kept with the verdict. The simulated judge offline, the mock server over HTTP."""

from __future__ import annotations

import json
from itertools import permutations

import pytest

from arboris_nb import (
    ChapterContext,
    ConfigError,
    Evaluation,
    EvaluationError,
    LLMConfig,
    PairVerdict,
    SimulatedLLM,
    StateError,
    chapter_messages,
    evaluate,
    parse_evaluation,
    simulated_judge,
)
from arboris_nb.judge import evaluation_candidates
from arboris_nb.judge_prompts import (
    DEFAULT_CRITERIA,
    EVALUATION_SYSTEM_PROMPT,
    PAIRWISE_SYSTEM_PROMPT,
    evaluation_messages,
    parse_pair_reply,
)
from arboris_nb.mockserver import MockServer
from arboris_nb.results import Run, Version

XSS = "<script>alert(1)</script> <img src=x onerror=alert(2)>"
# Scores of the simulated judge (distinct words / words): 1.0, 0.5 and 0.975. Versions 1
# and 3 are within its close-call margin, so it picks whichever it reads first.
DISTINCT = " ".join(f"word{i}" for i in range(40))
REPEATED = " ".join(f"word{i % 20}" for i in range(40))
ALMOST = " ".join(f"word{i}" for i in range(39)) + " word0"


def ok_run(*texts: str) -> Run:
    versions = [Version(index=i, status="ok", content=t) for i, t in enumerate(texts, 1)]
    return Run(run_id="r1", versions=versions)


def fast(**kwargs: object) -> SimulatedLLM:
    return SimulatedLLM(ttft_s=0.0, tokens_per_s=10_000.0, output_tokens=20, **kwargs)  # type: ignore[arg-type]


# -- the chapter's context ------------------------------------------------------------------
def test_chapter_context_reads_back_what_chapter_messages_wrote() -> None:
    context = ChapterContext(
        goal="She finds the letter.",
        blueprint='{"title": "Harbor"}',
        previous_summaries=["The storm.", "The stranger."],
        previous_tail="…the door closed.",
        notes="Keep it quiet.",
        chapter=3,
        title="The Letter",
    )
    assert ChapterContext.from_prompt(context.text()) == context
    one = chapter_messages(chapter=2, goal="Open.", previous_summary="Before.")[1]["content"]
    assert ChapterContext.from_prompt(one) == ChapterContext(
        goal="Open.", previous_summaries=("Before.",), chapter=2
    )
    assert ChapterContext.from_prompt("Write chapter 5") == ChapterContext(goal="Write chapter 5")
    assert ChapterContext.from_prompt("").empty and ChapterContext().text() == ""


def test_chapter_context_lists_several_summaries_and_refuses_bad_values() -> None:
    text = ChapterContext(previous_summaries=["One.", " ", "Two."]).text()
    assert text == "[Previous chapters' summaries, oldest first]\n1. One.\n2. Two."
    assert ChapterContext(previous_summaries="Only one.").previous_summaries == ("Only one.",)
    with pytest.raises(ConfigError, match="chapter must be a whole number 1 or more, got 0"):
        ChapterContext(chapter=0)
    with pytest.raises(ConfigError, match="previous_summaries must be a list of strings"):
        ChapterContext(previous_summaries=[1, 2])  # type: ignore[list-item]


def test_the_judge_gets_the_context_the_criteria_then_the_versions() -> None:
    context = ChapterContext(goal="the gate", blueprint="A harbor city", previous_summaries="x")
    (system, user) = evaluation_messages(
        ok_run("one", "two").versions, context=context, criteria=["pacing", "voice"]
    )
    assert system == {"role": "system", "content": EVALUATION_SYSTEM_PROMPT}
    assert user["content"] == (
        "[World blueprint]\nA harbor city\n\n[Previous chapter summary]\nx\n\n"
        "[This chapter's goal]\nthe gate\n\n[Criteria]\n- pacing\n- voice\n\n"
        "[Version 1]\none\n\n[Version 2]\ntwo"
    )


# -- all at once ----------------------------------------------------------------------------
ARBORIS_REPLY = """<think>compare them</think>
```json
{"best_choice": 2, "ranking": [2, 1], "reason_for_choice": "tighter pacing",
 "evaluation": {"version1": {"pros": ["vivid"], "cons": ["slow"], "overall_review": "ok"},
                "version2": {"pros": ["tight", "clear"], "cons": []}}}
```"""


def test_parse_evaluation_reads_arboris_shape_through_fences_and_think() -> None:
    ev = parse_evaluation(ARBORIS_REPLY)
    assert (ev.best_choice, ev.reason, ev.ranking) == (2, "tighter pacing", (2, 1))
    assert ev.versions == {
        1: {"pros": ["vivid"], "cons": ["slow"]},
        2: {"pros": ["tight", "clear"], "cons": []},
    }


def test_parse_evaluation_accepts_plain_keys_and_no_ranking() -> None:
    ev = parse_evaluation(
        '{"best_version": "version 3", "reason": "r", "versions": {"3": {"pros": "one"}}}'
    )
    assert (ev.best_choice, ev.reason, ev.versions) == (3, "r", {3: {"pros": ["one"], "cons": []}})
    assert ev.ranking == (3,)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("Version 2 is better.", "not a JSON object"),
        ('{"best_choice": 1', "not a JSON object"),
        ('{"reason": "no choice"}', "no best_choice"),
        ('{"best_choice": 1, "ranking": [2, 1]}', r"ranking \[2, 1\] .* starts with .* \(1\)"),
        ('{"best_choice": 1, "ranking": "1 > 2"}', "is not a list of version numbers"),
    ],
)
def test_parse_evaluation_errors_are_clear_and_keep_the_reply(reply: str, message: str) -> None:
    with pytest.raises(EvaluationError, match=message) as info:
        parse_evaluation(reply)
    assert info.value.reply == reply


async def test_evaluate_with_the_simulated_judge_picks_the_most_varied_version() -> None:
    run = ok_run("a a a a a a", "rain falls on the old stone gate", "b b c c b b")
    ev = await evaluate(run, llm=simulated_judge(ttft_s=0.0, tokens_per_s=10_000.0))
    assert (ev.best_choice, ev.ranking, ev.mode) == (2, (2, 3, 1), "all")
    assert set(ev.versions) == {1, 2, 3}
    assert ev.versions[1]["cons"] and not ev.versions[2]["cons"]
    assert ev.criteria == DEFAULT_CRITERIA and ev.context is None


async def test_the_context_changes_the_verdict() -> None:
    # Version 1 has the richer vocabulary; version 2 tells the chapter the outline asks for.
    run = ok_run(
        "rain falls on the old stone gate tonight",
        "the lantern keeper finds the letter in the archive",
    )
    judge = simulated_judge(ttft_s=0.0)
    assert (await evaluate(run, llm=judge)).best_choice == 1
    context = {"goal": "The lantern keeper finds the letter.", "blueprint": "A harbor city."}
    ev = await evaluate(run, llm=judge, context=context, criteria=["fidelity to the outline"])
    assert ev.best_choice == 2 and "fidelity to the context" in ev.reason
    assert ev.context == ChapterContext(**context) and ev.criteria == ("fidelity to the outline",)
    (call,) = ev.calls
    assert "[World blueprint]\nA harbor city." in call.messages[1]["content"]
    assert "- fidelity to the outline\n\n[Version 1]" in call.messages[1]["content"]


async def test_a_plain_simulated_model_evaluates_offline_as_the_simulated_judge() -> None:
    run = ok_run("a a a a a a", "rain falls on the old stone gate")
    llm = fast()  # writes prose; evaluate() judges with its simulated_judge twin
    ev = await evaluate(run, llm=llm, goal="the gate")
    assert (ev.best_choice, set(ev.versions)) == (2, {1, 2})
    assert llm.reply is None  # the caller's model is left as it was...
    (request,) = llm.calls  # ...and still records the request it was sent
    assert request.run_id == "r1-eval" and "[Version 2]" in request.prompt
    assert ev.context == ChapterContext(goal="the gate")


@pytest.mark.looptime  # the failing judge's retry backoff passes on the fake clock
async def test_evaluate_refuses_unparseable_or_impossible_verdicts() -> None:
    run = ok_run("one text", "two text")
    with pytest.raises(EvaluationError, match="not a JSON object") as info:
        await evaluate(run, llm=fast(reply="Version 2 is better."))  # prose, not a verdict
    assert info.value.reply == "Version 2 is better."
    with pytest.raises(EvaluationError, match="version 9, which is not an ok version"):
        await evaluate(run, llm=fast(reply='{"best_choice": 9, "reason_for_choice": "x"}'))
    with pytest.raises(EvaluationError, match="version 7, which is not an ok version"):
        await evaluate(run, llm=fast(reply='{"best_choice": 1, "ranking": [1, 7]}'))
    with pytest.raises(EvaluationError, match=r"no reply \(failed: .*simulated failure"):
        await evaluate(run, llm=fast(fail_versions=[1]))  # the judge's request fails
    with pytest.raises(StateError, match="at least 2 done versions; the run has 1"):
        await evaluate(ok_run("alone"), llm=fast())
    with pytest.raises(StateError, match="the run has 0"):
        evaluation_candidates(Run(run_id="r", versions=[Version(index=1, status="failed")]))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "best"}, 'mode must be "all" or "pairwise", got \'best\''),
        ({"criteria": []}, "criteria must name 1 to 12 criteria, got 0"),
        ({"criteria": [" ", ""]}, "criteria must name 1 to 12 criteria, got 0"),
        ({"criteria": [f"c{i}" for i in range(13)]}, "criteria must name 1 to 12 criteria, got 13"),
        ({"criteria": [1]}, "criteria must be a list of strings"),
        ({"max_parallel": 0}, "max_parallel must be a whole number from 1 to 10, got 0"),
        ({"context": {"outline": "x"}}, r"unknown fields \['outline'\]; allowed: blueprint, "),
        ({"context": "the goal"}, "context must be a ChapterContext or a dict of its fields"),
        ({"context": {"goal": "a"}, "goal": "b"}, "the goal is given twice"),
    ],
)
async def test_bad_settings_are_refused_before_the_judge_is_asked(
    options: dict[str, object], message: str
) -> None:
    llm = fast()
    with pytest.raises(ConfigError, match=message):
        await evaluate(ok_run("one", "two"), llm=llm, **options)  # type: ignore[arg-type]
    assert llm.calls == []


def test_simulated_judge_refuses_reply() -> None:
    with pytest.raises(ConfigError, match="reply"):
        simulated_judge(reply="x")


# -- pairwise --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "winner", "reason"),
    [
        ('{"winner": "A", "reason": "tighter"}', "A", "tighter"),
        ('<think>hm</think>```json\n{"winner": "Version B"}\n```', "B", ""),
        ('{"better": "tie", "reason_for_choice": "even"}', None, "even"),
    ],
)
def test_parse_pair_reply(reply: str, winner: str | None, reason: str) -> None:
    assert parse_pair_reply(reply) == (winner, reason)


async def test_pairwise_judges_every_pair_in_both_orders_and_reports_agreement() -> None:
    llm = fast()
    run = ok_run(DISTINCT, REPEATED, ALMOST)
    ev = await evaluate(run, llm=llm, mode="pairwise", criteria=["prose"])
    shown = {(c.pair, c.messages[1]["content"]) for c in ev.calls}
    assert {pair for pair, _ in shown} == set(permutations([1, 2, 3], 2))
    for (first, second), user in shown:
        a, b = run.versions[first - 1].content, run.versions[second - 1].content
        assert user.endswith(f"[Criteria]\n- prose\n\n[Version A]\n{a}\n\n[Version B]\n{b}")
        assert "[Version 1]" not in user  # the judge never sees the numbers
    assert all(c.messages[0]["content"] == PAIRWISE_SYSTEM_PROMPT for c in ev.calls)
    assert len(llm.calls) == 6

    # 1 and 2, 2 and 3: clear in both orders. 1 and 3: too close, the first shown wins.
    verdicts = {(p.a, p.b): (p.winner_ab, p.winner_ba, p.agree) for p in ev.pairs}
    assert verdicts == {(1, 2): (1, 1, True), (1, 3): (1, 3, False), (2, 3): (3, 3, True)}
    assert ev.agreement == pytest.approx(2 / 3)
    assert ev.wins == {1: 3.0, 2: 0.0, 3: 3.0}
    assert (ev.mode, ev.ranking, ev.best_choice) == ("pairwise", (1, 3, 2), 1)
    assert (
        ev.reason
        == "version 1 won 3 of 4 comparisons (tied with version 3; the lower number is first)"
    )
    assert ev.versions[2]["pros"] == [] and len(ev.versions[2]["cons"]) == 4
    assert ev.versions[3]["pros"][0] == (
        "beat version 1 (read as A): a close call; the first one read slightly better "
        "(simulated judge)"
    )


async def test_pairwise_with_a_judge_that_always_says_a() -> None:
    ev = await evaluate(
        ok_run("x", "y", "z"), llm=fast(reply='{"winner": "A", "reason": "first"}'), mode="pairwise"
    )
    assert ev.agreement == 0.0 and ev.wins == {1: 2.0, 2: 2.0, 3: 2.0}
    assert ev.ranking == (1, 2, 3)


@pytest.mark.looptime
async def test_a_pairwise_reply_of_the_wrong_shape_names_the_pair() -> None:
    run = ok_run("one", "two")
    with pytest.raises(
        EvaluationError,
        match=r"winner must be \"A\", \"B\" or \"tie\", got 'c' "
        r"\(versions 1 and 2, 1 shown first\)",
    ) as info:
        await evaluate(run, llm=fast(reply='{"winner": "C"}'), mode="pairwise")
    assert info.value.reply == '{"winner": "C"}'
    with pytest.raises(EvaluationError, match=r"no reply comparing versions 1 and 2 \(failed: "):
        await evaluate(run, llm=fast(fail_versions=[1]), mode="pairwise")


def test_pairwise_html_shows_ranking_and_agreement_and_escapes_reasons() -> None:
    ev = Evaluation(
        1,
        XSS,
        {},
        mode="pairwise",
        ranking=(1, 2),
        wins={1: 1.5, 2: 0.5},
        pairs=(PairVerdict(1, 2, 1, None, XSS, "even"),),
        agreement=0.0,
    )
    out = ev.to_html()
    assert "<script" not in out and "<img" not in out and out.count("&lt;script&gt;") == 2
    assert "Both orders agreed on 0 of 1 pairs (0%)." in out
    assert "<td>1</td><td>version 1</td><td>1.5 of 2</td>" in out
    assert "<td>tie — even</td>" in out


def test_evaluation_html_is_escaped() -> None:
    ev = Evaluation(best_choice=1, reason=XSS, versions={1: {"pros": [XSS], "cons": [XSS]}})
    out = ev.to_html()
    assert "<script" not in out and "<img" not in out
    assert out.count("&lt;script&gt;") == 3


# -- kept with the verdict, as JSON, without secrets ----------------------------------------
async def test_an_evaluation_round_trips_through_json() -> None:
    context = ChapterContext(goal="g", blueprint={"world": "harbor"}, previous_summaries=["a", "b"])
    for mode in ("all", "pairwise"):
        ev = await evaluate(
            ok_run(DISTINCT, REPEATED, ALMOST),
            llm=fast(),
            mode=mode,
            context=context,  # type: ignore[arg-type]
        )
        text = json.dumps(ev.to_dict())
        assert Evaluation.from_dict(json.loads(text)) == ev
        assert ev.created_at is not None and ev.elapsed_s is not None


SECRET = "sk-judge-SECRET-0123456789abcdef"


async def test_over_http_the_request_reply_usage_and_time_are_kept_without_the_key() -> None:
    reply = '{"best_choice": 2, "ranking": [2, 1], "reason_for_choice": "r", "evaluation": {}}'
    mock = MockServer(require_key=SECRET, reply=reply, ttft_s=0.05, tokens_per_s=2000.0)
    with mock as base_url:
        llm = LLMConfig(api_key=SECRET, base_url=base_url, model="mock-model")
        ev = await evaluate(ok_run("one text", "two text"), llm=llm)
    assert (ev.best_choice, ev.ranking, ev.raw) == (2, (2, 1), reply)
    (call,) = ev.calls
    assert call.reply == reply and call.status == "ok" and call.attempts == 1
    assert call.tokens_from_usage and call.output_tokens == ev.output_tokens > 0
    assert call.duration_s is not None and call.duration_s >= 0.05
    assert call.messages[1]["content"].endswith("[Version 2]\ntwo text")
    for text in (json.dumps(ev.to_dict()), repr(ev), ev.to_html()):
        assert SECRET not in text and SECRET[-8:] not in text


async def test_pairwise_requests_run_at_most_max_parallel_at_once() -> None:
    mock = MockServer(reply='{"winner": "B", "reason": "later"}', ttft_s=0.1, tokens_per_s=2000.0)
    with mock as base_url:
        llm = LLMConfig(base_url=base_url, model="mock-model")
        ev = await evaluate(ok_run("a", "b", "c"), llm=llm, mode="pairwise", max_parallel=2)
        stats = mock.stats()
    assert stats["requests"] == 6 and stats["max_in_flight"] == 2
    assert ev.agreement == 0.0 and len(ev.calls) == 6


# -- linked retries are candidates too ------------------------------------------------------
def with_retries(run: Run, *retries: tuple[int, str]) -> Run:
    """``run`` with linked retry runs (parent version, text), oldest first."""
    for n, (parent, text) in enumerate(retries, 1):
        version = Version(index=parent, status="ok", content=text)
        run.retries.append(
            Run(f"r1-retry-{n}", [version], parent_run_id=run.run_id, parent_index=parent)
        )
    return run


async def test_all_at_once_judges_the_retries_by_their_labels() -> None:
    # Retry 2 of version 1 is the richest text, retry 1 of version 1 failed (no candidate).
    run = with_retries(ok_run("a a a a a a", "b b c c b b"), (1, "a b a b"), (1, DISTINCT))
    run.retries[0].versions[0].status = "failed"
    assert list(evaluation_candidates(run)) == [1, (1, 2), 2]
    llm = fast()
    ev = await evaluate(run, llm=llm)
    (request,) = llm.calls
    assert "[Version 1]\na a a a a a\n\n[Version 1r2]\n" in request.prompt
    assert "[Version 1r1]" not in request.prompt
    assert (ev.best_choice, ev.ranking) == ((1, 2), ((1, 2), 2, 1))
    assert set(ev.versions) == {1, (1, 2), 2}
    assert "<b>Best: version 1 · retry 2</b>" in ev.to_html()
    assert "Version 1 · retry 2" in ev.to_html()  # its pros and cons, named as the panel


async def test_a_verdict_naming_a_retry_round_trips_and_old_ones_still_load() -> None:
    run = with_retries(ok_run("one two", "three four"), (2, "five six seven"))
    reply = (
        '{"best_choice": "2r1", "ranking": ["version 2 retry 1", 1, "2"], '
        '"reason_for_choice": "r", "evaluation": {"version2r1": {"pros": ["p"]}}}'
    )
    ev = await evaluate(run, llm=fast(reply=reply))
    assert (ev.best_choice, ev.ranking) == ((2, 1), ((2, 1), 1, 2))
    stored = json.loads(json.dumps(ev.to_dict()))
    assert stored["versions"] == {"2r1": {"pros": ["p"], "cons": []}}
    assert Evaluation.from_dict(stored) == ev
    old = {
        "best_choice": 2,
        "reason": "r",
        "ranking": [2, 1],
        "versions": {"1": {}},
        "wins": {"1": 0.0, "2": 2.0},
        "pairs": [{"a": 1, "b": 2, "winner_ab": 2, "winner_ba": None}],
        "calls": [{"messages": [], "reply": "", "pair": [1, 2]}],
    }
    back = Evaluation.from_dict(old)
    assert (back.best_choice, back.ranking, back.wins) == (2, (2, 1), {1: 0.0, 2: 2.0})
    assert back.pairs == (PairVerdict(1, 2, 2, None),) and back.calls[0].pair == (1, 2)
    with pytest.raises(EvaluationError, match="version 2 · retry 2, which is not an ok version"):
        await evaluate(run, llm=fast(reply='{"best_choice": "2r2"}'))


async def test_pairwise_judges_each_retry_against_every_version() -> None:
    run = with_retries(ok_run(DISTINCT, REPEATED), (1, REPEATED))
    ev = await evaluate(run, llm=fast(), mode="pairwise")
    assert [(p.a, p.b) for p in ev.pairs] == [(1, (1, 1)), (1, 2), ((1, 1), 2)]
    assert {c.pair for c in ev.calls} == set(permutations([1, (1, 1), 2], 2))
    assert ev.wins == {1: 4.0, (1, 1): 1.0, 2: 1.0}
    assert ev.ranking == (1, (1, 1), 2)  # a tie: the one shown first (the retry) first
    assert ev.versions[(1, 1)]["cons"][0].startswith("lost to version 1 (read as ")
    back = Evaluation.from_dict(json.loads(json.dumps(ev.to_dict())))
    assert back == ev
    assert "<td>1&nbsp;vs&nbsp;1r1</td>" in ev.to_html()
