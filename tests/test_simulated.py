"""SimulatedLLM's Chinese mode: deterministic Chinese prose, streamed two characters a token."""

from __future__ import annotations

import re

import pytest

from arboris_nb import ConfigError, SimulatedLLM, WriterSettings, generate_versions
from arboris_nb.backends.simulated import simulated_text

HAN = re.compile(r"[\u4e00-\u9fff]")


def test_chinese_text_is_deterministic_and_differs_by_version() -> None:
    one = simulated_text("第三章", 1, 100, lang="zh")
    assert one == simulated_text("第三章", 1, 100, lang="zh")
    assert one != simulated_text("第三章", 2, 100, lang="zh")
    assert one != simulated_text("第三章", 1, 100, seed=1, lang="zh")
    assert one.startswith("版本1。") and one.endswith("。")
    assert len(HAN.findall(one)) > 0.8 * len(one) and " " not in one
    assert 200 <= len(one) - len("版本1。") <= 210  # about two characters a token


@pytest.mark.looptime
async def test_chinese_run_streams_whole_characters_and_counts_tokens() -> None:
    llm = SimulatedLLM(lang="zh", output_tokens=50, tokens_per_s=100.0)
    deltas: list[str] = []
    run = await generate_versions(
        "第三章",
        settings=WriterSettings(version_count=2),
        llm=llm,
        on_event=lambda e: deltas.append(e.text) if hasattr(e, "text") else None,
    )
    first = run.versions[0]
    assert first.content == simulated_text("第三章", 1, 50, lang="zh")
    assert all(len(d) <= 2 for d in deltas)
    assert first.output_tokens == (len(first.content) + 1) // 2


def test_arboris_lang_zh_is_the_default_and_a_bad_lang_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert SimulatedLLM().lang == "en"
    monkeypatch.setenv("ARBORIS_LANG", "zh")
    assert SimulatedLLM().lang == "zh" and SimulatedLLM(lang="en").lang == "en"
    with pytest.raises(ConfigError, match="lang must be 'en' or 'zh', got 'fr'"):
        SimulatedLLM(lang="fr")
