"""Create `.env` from `.env.example` with a fresh random SECRET, so `make run` is one command.

An existing `.env` is never touched: it may hold a user's real secret and token.
"""

from __future__ import annotations

import re
import secrets
import sys
from pathlib import Path


def ensure_env_file(target: Path, example: Path) -> bool:
    """Returns True when a new file was written."""
    if target.exists():
        return False
    template = example.read_text() if example.is_file() else "SECRET=\n"
    secret = secrets.token_urlsafe(32)
    if re.search(r"^SECRET=.*$", template, flags=re.M):
        content = re.sub(r"^SECRET=.*$", f"SECRET={secret}", template, count=1, flags=re.M)
    else:
        content = f"SECRET={secret}\n{template}"
    target.write_text(content)
    target.chmod(0o600)
    return True


def main(argv: list[str]) -> int:
    target = Path(argv[0] if argv else ".env")
    example = Path(argv[1] if len(argv) > 1 else ".env.example")
    if ensure_env_file(target, example):
        print(f"created {target} with a new random SECRET (read it with: grep SECRET {target})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
