"""`labrl report RUN_DIR [--out DIR]`: curves (PNG) and one HTML page from a run directory alone."""

from __future__ import annotations

import argparse
import logging

from monitor.report import build_report
from monitor.run_logger import LOG_FORMAT

logger = logging.getLogger("labrl")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    p = argparse.ArgumentParser(prog="labrl report", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/report)")
    args = p.parse_args(argv)
    try:
        page = build_report(args.run_dir, args.out)
    except FileNotFoundError as err:
        logger.error("%s", err)
        return 2
    logger.info("report written to %s", page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
