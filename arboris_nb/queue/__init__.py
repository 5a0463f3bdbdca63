"""Whole-book generation queues: :class:`BookJob` runs every (chapter, version) unit under
one global concurrency limit, in this process (``backend="local"``) or on Celery workers
(``backend="celery"``, needs the ``celery`` extra; imported only when used).
"""

from __future__ import annotations

from .job import BOOK_FRAME_COLUMNS, BookJob, parse_chapters
from .records import BookRecords, chapter_run_id
from .redis_limit import RedisLimit
from .unit import BookSpec

__all__ = [
    "BOOK_FRAME_COLUMNS",
    "BookJob",
    "BookRecords",
    "BookSpec",
    "RedisLimit",
    "chapter_run_id",
    "parse_chapters",
]
