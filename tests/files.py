"""File checks more than one test module makes."""

from __future__ import annotations

from pathlib import Path


def not_world_readable(root: Path) -> list[str]:
    """Paths under ``root`` (itself included) another user cannot read, or whose folder it cannot enter."""

    def needed(path: Path) -> int:
        return 0o005 if path.is_dir() else 0o004

    return [str(p) for p in (root, *root.rglob("*")) if p.stat().st_mode & needed(p) != needed(p)]
