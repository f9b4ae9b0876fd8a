"""Coverage-guided fuzzing of one target of `fuzz/targets.py` with atheris (libFuzzer).

    python fuzz/run.py TARGET [--runs N] [--seconds S]

Starts from the seeds in `fuzz/corpus/TARGET/` (read only; new inputs go to a temporary
folder), instruments `edge2core` for coverage, and stops after N inputs or S seconds. A
finding (an exception the target does not expect) is written to `fuzz/crashes/` and the exit
status is non-zero: turn it into a seed in the corpus and a test with a clear refusal
(`tests/fuzz/test_regressions.py`). `make fuzz` runs every target for longer.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--runs", type=int, default=0, help="stop after this many inputs")
    parser.add_argument("--seconds", type=int, default=0, help="stop after this long")
    parser.add_argument("--max-len", type=int, default=64 * 1024)
    args = parser.parse_args()

    import atheris

    with atheris.instrument_imports(include=["edge2core"]):
        from fuzz.targets import TARGETS
    target = TARGETS[args.target]
    seeds = HERE / "corpus" / args.target
    crashes = HERE / "crashes"
    crashes.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{args.target}-"))
    libfuzzer = [sys.argv[0], str(work), str(seeds), f"-max_len={args.max_len}",
                 f"-artifact_prefix={crashes}/{args.target}-", "-rss_limit_mb=4096",
                 "-print_final_stats=1"]
    if args.runs:
        libfuzzer.append(f"-runs={args.runs}")
    if args.seconds:
        libfuzzer.append(f"-max_total_time={args.seconds}")
    try:
        atheris.Setup(libfuzzer, target)
        atheris.Fuzz()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
