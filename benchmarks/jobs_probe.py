#!/usr/bin/env python3
"""Run `auditpipe ARGS…` in this process and print, as one JSON line on stderr, where a
`parse --jobs N` run spent its CPU: the parent before it forked its workers (start-up), the
parent in all, and each worker (their own CPU, as they last reported it). Used by
bench_parse.py for the --jobs rows; wall time on a busy shared machine says little, these do."""

from __future__ import annotations

import json
import resource
import sys


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    from auditpipe.pipeline import parallel

    seen: dict = {"before_fork": None, "workers": [], "regroups": 0, "twice": 0, "shadows": 0, "verified": 0,
                  "pieces": 0}
    run = parallel.ParallelParse.run

    def probed(self, pieces):
        seen["before_fork"] = _cpu()
        try:
            return run(self, pieces)
        finally:
            seen.update(workers=list(self.worker_cpu), regroups=self.regroups, twice=self.twice,
                        shadows=self.shadows, verified=self.verified, pieces=len(self.known))

    parallel.ParallelParse.run = probed  # type: ignore[method-assign]
    from auditpipe.cli import main as cli

    code = 0
    try:
        cli(sys.argv[1:], standalone_mode=False)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    seen["parent"] = _cpu()
    print("jobs_probe " + json.dumps(seen), file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
