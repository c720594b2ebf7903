"""`labrl scale-run RUN_DIR --engines +1 --env-workers -2`: change a running run's rollout capacity.

The request is queued in the run directory; the run applies it after its current GRPO step
(`launch/elastic.py`): new engines start and join at the next weight sync, retired ones drain,
new env workers take groups once started, retired ones finish theirs. With `--wait S` the command
waits (up to S seconds) for the run to record the request in `scale_events.jsonl` and prints what
it did. On a cluster, run it where the run directory is, e.g. beside a submitted job's driver:
`ray job submit --address ... -- labrl scale-run runs/<run> --engines +1`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from launch.elastic import ScaleRequest, read_events, submit_request
from launch.run_state import CONFIG_FILE
from monitor.run_logger import LOG_FORMAT

logger = logging.getLogger("labrl")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="labrl scale-run", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="the run's directory (runs/<name>-<time>)")
    p.add_argument("--engines", type=int, default=0, help="vLLM engines to add (+n) or retire (-n)")
    p.add_argument("--env-workers", type=int, default=0, help="env workers to add (+n) or retire (-n)")
    p.add_argument("--reason", default="", help="recorded with the change (scale_events.jsonl)")
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for the run to apply the request")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    args = parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        logger.error("%s is not a run directory (no %s)", run_dir, CONFIG_FILE)
        return 2
    if (run_dir / "summary.json").is_file():
        logger.error("%s has finished (summary.json exists): nothing would apply the request", run_dir)
        return 2
    try:
        request = ScaleRequest(args.engines, args.env_workers, args.reason or "requested with labrl scale-run")
    except ValueError as err:
        logger.error("%s", err)
        return 2
    path = submit_request(run_dir, request)
    logger.info("queued %s (engines %+d, env workers %+d); the run applies it after its current step",
                path.name, request.engines, request.env_workers)
    if args.wait <= 0:
        return 0
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        event = next((e for e in read_events(run_dir) if e.get("id") == request.id), None)
        if event is not None:
            logger.info("applied after step %d: %s (now %d engine(s), %d env worker(s), counting those starting)",
                        event["step"], event["outcome"], event["engines_after"], event["env_workers_after"])
            return 1 if event["outcome"].startswith("refused") else 0
        time.sleep(1.0)
    logger.error("the run did not apply the request within %.0f s (is it running? a step may be long); "
                 "it stays queued", args.wait)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
