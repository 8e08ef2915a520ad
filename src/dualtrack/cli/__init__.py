"""The ``dualtrack`` command."""

from __future__ import annotations

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    print("dualtrack: no commands yet", file=sys.stderr)
    return 2
