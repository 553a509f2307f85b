"""``python -m tests.soak [walk|kill]``: the soak and the kill loop (``make soak``).

``walk`` (the default) is the seeded random walk (:mod:`tests.soak.loop`) for
``--seconds`` (default ``$SOAK_S``, else 600), with the simulator as the car or
``--source`` a recording; ``kill`` is the kill loop with the cloud
(:mod:`tests.soak.killloop`) for ``--kills`` SIGKILLs (default ``$SOAK_KILLS``, else
100). The seed is ``--seed``, else ``$TOUCHPOINT_SEED``, else random; it is printed
first either way.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tests.soak import killloop, loop


def main() -> int:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(prog="python -m tests.soak")
    parser.add_argument("mode", nargs="?", choices=("walk", "kill"), default="walk")
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_S") or 600))
    parser.add_argument("--kills", type=int, default=int(os.environ.get("SOAK_KILLS") or 100))
    seed = os.environ.get("TOUCHPOINT_SEED") or None
    parser.add_argument("--seed", type=int, default=int(seed) if seed else None)
    parser.add_argument(
        "--source",
        choices=loop.SOURCES,
        default="simulator",
        help="the car: the simulator driving at random, or a recording played back",
    )
    parser.add_argument("--dir", type=Path, help="keep the run's files here (default: a temp dir)")
    args = parser.parse_args()
    if args.mode == "kill":
        return killloop.main(args.kills, args.seed, args.dir)
    return loop.main(args.seconds, args.seed, args.dir, source=args.source)


if __name__ == "__main__":
    sys.exit(main())
