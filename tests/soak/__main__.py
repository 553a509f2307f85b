"""``python -m tests.soak``: the soak (``make soak``); see :mod:`tests.soak.loop`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tests.soak import loop


def main() -> int:
    """Parse the arguments (defaults from SOAK_S and TOUCHPOINT_SEED) and run."""
    parser = argparse.ArgumentParser(prog="python -m tests.soak")
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_S", "600")))
    seed = os.environ.get("TOUCHPOINT_SEED") or None
    parser.add_argument("--seed", type=int, default=int(seed) if seed else None)
    parser.add_argument("--dir", type=Path, help="keep the run's files here (default: a temp dir)")
    args = parser.parse_args()
    return loop.main(args.seconds, args.seed, args.dir)


if __name__ == "__main__":
    sys.exit(main())
