"""What one call into a replica costs in CPU, measured in-process: the call's header, Ray serializing it,
the replica's bookkeeping, its access line and its metrics (no network, no scheduling).

    python bench/per_call.py                      # this checkout
    python bench/per_call.py --compare ../other   # and another checkout of servegraph, alternating

Each side runs in a child process of its own (its own Ray, its own imports); with ``--compare`` the
two alternate ``--rounds`` times and the medians are printed side by side. Noisy machines: compare
the two columns of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import os, statistics, sys, tempfile, time
import ray
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
from servegraph.dsl.options import LoggingConfig
try:
    from servegraph.runtime.actors import replica
    from servegraph.runtime.common import records
except ImportError:  # a checkout from before the runtime's plane folders
    from servegraph.runtime import replica
    from servegraph.runtime import router as records

serialization = ray._private.worker.global_worker.get_serialization_context()


class Responder:
    def say_hello(self, name):
        return f"Hola {name}"


if "code" in replica._ReplicaCore.__init__.__code__.co_varnames:  # the user's code arrives pickled
    r = replica.SyncReplica("app", "Responder", "abcd1234", ray.cloudpickle.dumps((Responder, (), ())), (), False)
else:  # a checkout from before replicas unpickled their own code
    r = replica.SyncReplica("app", "Responder", "abcd1234", Responder, False, (), ())
r.initialize(None, 5, LoggingConfig(logs_dir=tempfile.mkdtemp()))
request = ("0123456789abcdef0123456789abcdef", "/", "app", "")
if hasattr(records, "call_header"):
    make = lambda: records.call_header("say_hello", request, ("Classifier",), time.time())
else:  # a checkout from before call headers were plain lists
    make = lambda: records.Sent("say_hello", request, ("Classifier",), time.time())


def one():
    header = make()
    serialization.serialize(header)  # what the caller's Ray call pays for the header
    r.call(header, "Dora")


for _ in range(2000):
    one()
rounds = []
for _ in range(5):
    n, start = 5000, time.process_time()
    for _ in range(n):
        one()
    rounds.append((time.process_time() - start) / n * 1e6)
print(statistics.median(rounds))
ray.shutdown()
"""


def measure(checkout: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout), "SERVEGRAPH_METRICS": "1"}
    # Run from the checkout, so the interpreter's first path entry (the working directory) is it too.
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, cwd=checkout, capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise SystemExit(f"{checkout}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'failed'}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=Path, help="another servegraph checkout, measured alternately")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sides = [ROOT] + ([args.compare.resolve()] if args.compare else [])
    figures: dict[Path, list[float]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side in sides:
            figures[side].append(measure(side))
    print("per call into a replica (header, serialization, bookkeeping, access line, metrics), CPU µs:")
    for side, values in figures.items():
        print(f"  {str(side):50} median {statistics.median(values):6.1f}   rounds {[round(v, 1) for v in values]}")


if __name__ == "__main__":
    main()
