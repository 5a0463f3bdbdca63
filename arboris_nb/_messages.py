"""Log and display wording in English or, with ``ARBORIS_LANG=zh``, the seed's Chinese."""

from __future__ import annotations

import os

__all__ = ["lang", "text"]

_TEXT: dict[str, dict[str, str]] = {
    "plan": {
        "en": "project {project} chapter {chapter}: {n} versions planned (parallel: {parallel})",
        "zh": "项目 {project} 第 {chapter} 章计划生成 {n} 个版本（并行模式：{parallel}）",
    },
    "start": {
        "en": "generating version {i}/{n}",
        "zh": "开始生成第 {i}/{n} 个版本",
    },
    "finish": {
        "en": "version {i}/{n} done in {s:.2f} s ({tokens} tokens, {attempts} attempt(s))",
        "zh": "第 {i}/{n} 个版本生成完成，耗时 {s:.2f} 秒（{tokens} tokens，{attempts} 次尝试）",
    },
    "retry": {
        "en": "version {i}/{n} attempt {attempt} failed ({error}); retrying in {delay:.2f} s",
        "zh": "第 {i}/{n} 个版本第 {attempt} 次尝试失败（{error}），{delay:.2f} 秒后重试",
    },
    "fail": {
        "en": "version {i}/{n} failed: {error}",
        "zh": "第 {i}/{n} 个版本生成失败：{error}",
    },
    "cancel": {
        "en": "version {i}/{n} cancelled",
        "zh": "第 {i}/{n} 个版本已取消",
    },
    "done": {
        "en": "all versions done in {s:.2f} s (parallel: {parallel})",
        "zh": "所有版本生成完成，耗时 {s:.2f} 秒（并行模式：{parallel}）",
    },
}


def lang() -> str:
    """``zh`` when ARBORIS_LANG starts with zh, else ``en``."""
    return "zh" if os.environ.get("ARBORIS_LANG", "").lower().startswith("zh") else "en"


def text(key: str, **values: object) -> str:
    return _TEXT[key][lang()].format(**values)
