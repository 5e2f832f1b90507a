"""Build a folder beside its final name and rename it into place (caches shared between runs)."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


@contextmanager
def staged_folder(root: Path, key: str, is_complete: Callable[[Path, str], bool], what: str) -> Iterator[Path]:
    """Yield an empty staging folder beside root/key; when the block ends normally, rename it to root/key.

    The block writes its marker of completeness (meta.json) last. A leftover incomplete root/key is
    removed first; a concurrent builder that published the same key first wins (its content is
    equivalent); on any error the staging folder is removed and nothing is published.
    """
    final = Path(root) / key
    if final.exists() and not is_complete(final, key):  # re-checked: another builder may just have finished
        logger.warning("%s %s is incomplete or corrupt; rebuilding it", what, final)
        shutil.rmtree(final, ignore_errors=True)
    Path(root).mkdir(parents=True, exist_ok=True)
    staging = Path(root) / f".{key}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        try:
            os.rename(staging, final)
        except OSError:
            # Another process published the same key first; its cache is equivalent.
            if not is_complete(final, key):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
