"""Run ``carechart`` exactly as installed, optionally with a search-module stub preloaded.

Usage: ``python benchmarks/serve.py serve --port P`` (same arguments as ``carechart``).

The benchmarks start servers through this wrapper so that, while ``carechart.fhir.search``
is still being written, a stand-in can be injected with ``CARECHART_BENCH_STUB=/path/stub.py``
(the file must register ``sys.modules["carechart.fhir.search"]``). Without that variable
this is plain ``carechart.cli.main()`` and nothing else is imported.
"""

from __future__ import annotations

import os
import runpy
import sys


def main() -> None:
    stub = os.environ.get("CARECHART_BENCH_STUB")
    if stub:
        runpy.run_path(stub, run_name="carechart_bench_stub")
    from carechart.cli import main as cli_main

    sys.argv = ["carechart", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
