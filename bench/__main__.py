"""`python -m bench` (`make bench`): run the suite, print the tables, save JSON and a PNG."""

from __future__ import annotations

import signal
import sys
from datetime import UTC, datetime
from types import FrameType

from bench import chart, suite, table
from bench.options import parse
from bench.processes import say
from bench.results import save_json


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    # SIGTERM cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    say(
        f"{'quick smoke run' if opts.quick else 'full run'}: systems {', '.join(opts.systems)};"
        f" scenarios {', '.join(opts.scenarios)}; {opts.duration:.0f}s each;"
        f" {opts.editors} editors x {opts.edits_per_editor_s:g} edits/s over {opts.docs} docs;"
        f" flush interval {opts.flush_interval}s"
    )
    try:
        report, failures = suite.run(opts)
    except KeyboardInterrupt:
        say("interrupted: every process started was stopped")
        return 130
    print()
    print(table.everything(report), flush=True)
    print()
    for path in save_json(report, opts.results_dir, stamp):
        say(f"saved {path}")
    if opts.plot and (report.loads or report.flushes):
        for path in chart.draw(report, opts.results_dir, stamp, opts.flush_interval):
            say(f"saved {path}")
    if opts.plot and report.collab:
        for path in chart.draw_collab(report, opts.results_dir, stamp):
            say(f"saved {path}")
    for failure in failures:
        say(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
