"""Shared fixtures: one real Ray cluster for the whole test session.

The cluster gets plenty of logical CPUs so tests never wait for resources;
replicas reserve only a fraction of one by default anyway.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port  # noqa: F401  (tests import it from here)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TESTS = ROOT / "tests"

# Examples are imported by module name, as `servegraph run hello:...` does from examples/.
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

#: Logical CPUs of the test cluster; tests that exercise the resource check size requests against it.
TEST_CLUSTER_CPUS = 16


#: Where the test cluster's metrics agent serves Prometheus text (Ray's metrics export port).
METRICS_PORT = free_port()


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """These environment variables set while the block runs (for the processes it starts), then as they were."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by every test that needs one; shut down at the end."""
    import ray

    import servegraph as serve

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # The controller and proxy unpickle the compiled graph, so they too must import the modules deployments
    # are defined in: the examples and the test modules themselves. The cluster's processes inherit this
    # process's environment when ray.init starts them (and every worker the raylet's), so PYTHONPATH is set
    # for that moment only: a job runtime_env would do the same, but makes Ray start every worker as two
    # processes, each importing Ray (about 0.4 CPU-s more per replica).
    # Ray's log monitor lists its log folder ten times a second while it holds fewer than 1,000 files, and
    # every replica adds files (a full run starts about 500 workers here): 6 ms a listing by the end, for lines
    # no driver reads (log_to_driver=False). With the threshold at 0 it lists the folder every 0.5 s instead,
    # as Ray does on its own for folders of many files (log monitors in a full run: 46 CPU-s before, 21 after).
    before = os.environ.get("PYTHONPATH")
    with environment(
        PYTHONPATH=os.pathsep.join([str(EXAMPLES), str(ROOT), str(TESTS), *filter(None, [before])]),
        RAY_LOG_MONITOR_MANY_FILES_THRESHOLD="0",
    ):
        ray.init(
            # A new cluster of the tests' own, whatever Ray's ray_current_cluster file points at.
            address="local",
            num_cpus=TEST_CLUSTER_CPUS,
            include_dashboard=False,
            namespace="servegraph",
            log_to_driver=False,
            # Metrics reach Prometheus's endpoint within a second (Ray's default is every 10 s).
            _metrics_export_port=METRICS_PORT,
            _system_config={"metrics_report_interval_ms": 1000},
        )
    yield ray
    serve.shutdown()
    ray.shutdown()


@pytest.fixture
def serve_app(ray_cluster):
    """Deletes every application a test deployed when it ends.

    Applications that were running before the test (a module's shared ones, see
    ``deploy``), the cluster and the proxy stay up.
    """
    import servegraph as serve

    before = set(serve.status().applications)
    yield serve
    for name in sorted(set(serve.status().applications) - before):
        serve.delete(name)


class _Deployer:
    """``deploy(graph, name="x", route_prefix="/x")``: ``serve.run`` on the session's proxy port; remembers the names."""

    def __init__(self, http_port: int):
        self.http_port = http_port
        self.names: list[str] = []

    def __call__(self, target, *, name: str, route_prefix: str | None = None, **kwargs):
        import servegraph as serve

        handle = serve.run(target, name=name, route_prefix=route_prefix, port=self.http_port, **kwargs)
        if name not in self.names:
            self.names.append(name)
        return handle

    def delete_from(self, start: int) -> None:
        """Delete the applications deployed since ``names`` had ``start`` entries."""
        import servegraph as serve

        for name in self.names[start:]:
            serve.delete(name)
        del self.names[start:]


@pytest.fixture(scope="module")
def deploy(ray_cluster, http_port):
    """Deploy applications for a module: those a module-scoped fixture deploys are shared by its tests and
    deleted when the module ends; those a test deploys in its own body are deleted when that test ends (see
    ``_apps_of_the_test``).

    ``deploy(graph, name="x", route_prefix="/x")`` returns the handle ``serve.run``
    returns. Every application uses the session's proxy port; with no
    ``route_prefix`` it gets no HTTP route, so modules never collide on ``/``.
    """
    deployer = _Deployer(http_port)
    yield deployer
    deployer.delete_from(0)


@pytest.fixture(autouse=True)
def _apps_of_the_test(request):
    """A test's own applications go when it ends; module-scoped fixtures, set up before this one, keep theirs.

    Left up until their module ended, they idled beside every later test of the module (test_compiled_path.py
    had 77 Ray worker processes alive by its end), and an idle Ray worker process costs about 0.8 % of a core
    (measured on raw Ray actors as on replicas). test_compiled_path, test_control_plane and
    test_ray_driver_parity together: 217-220 busy core-s and 142-145 s before, 152-164 core-s and 115-122 s
    after (two runs each)."""
    if "deploy" not in request.fixturenames:
        yield
        return
    deployer = request.getfixturevalue("deploy")
    start = len(deployer.names)
    yield
    deployer.delete_from(start)


@pytest.fixture(scope="session")
def http_port(ray_cluster) -> int:
    """The port the session's HTTP proxy listens on (one proxy for the whole session)."""
    return free_port()


#: Test files that start Ray clusters of their own (several nodes, or child processes): run one at a time.
OWN_CLUSTERS = frozenset(
    {
        "test_chaos.py",
        "test_multinode.py",
        "test_node_loss.py",
        "test_placement_groups.py",
        "test_request_logs.py",
        "test_lifecycle.py",
    }
)


#: Ray test files that run in whichever lane is free, as Ray-free files do (a group each, handed out as lanes near
#: their ends): they start at most one small cluster or process of their own, or use the session cluster of the
#: worker that runs them (Ray Serve's parity file: Ray Serve runs there next to servegraph, and shuts down after).
#: Longest first (Ray Serve's parity file by far, then about 25, 16 and 15 s in a full run): the order they are handed out in.
ANY_LANE = ("test_rayserve_backend.py", "test_grpc.py", "test_tracing.py", "test_serve_start.py")


def _hand_out_order(group: str) -> tuple[int, int]:
    """Where a group stands in xdist's queue: the two lanes, then the ANY_LANE files, then the Ray-free files.

    A lane takes the next group when it has two tests left, so whatever group is next then waits behind the
    lane's last tests; with the short Ray-free files last, the two lanes end within seconds of each other
    (handed out by size, as xdist does by default, the last group out was a 20 s gRPC file, run alone).
    """
    if group == "session-cluster":
        return 0, 0
    if group == "own-clusters":
        return 1, 0
    if group in ANY_LANE:
        return 2, ANY_LANE.index(group)
    return 3, 0


def _compile_once() -> None:
    """Write the bytecode of servegraph and of the test modules, as a first import would.

    Every replica, proxy and controller imports servegraph, as do the CLI's children and the examples' modules,
    so a full run starts about 600 Python processes that import it. With ``PYTHONDONTWRITEBYTECODE`` set (as on
    CI) and a fresh clone, no process would write a ``__pycache__`` and each would compile the sources again
    (a replica's import of servegraph: 0.22 s instead of 0.16). ``__pycache__`` is in .gitignore, so the tree
    stays clean.
    """
    import compileall

    for folder in (ROOT / "servegraph", TESTS, EXAMPLES):
        compileall.compile_dir(folder, quiet=2, workers=1)


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups set here
def pytest_collection_modifyitems(config, items):
    """Every test that uses the session's Ray cluster (directly or through another fixture) is marked ``ray``,
    so ``pytest -m "not ray"`` runs the rest without starting Ray. Tests that start Ray themselves (in a child
    process) carry the mark explicitly."""
    groups = {}
    for item in items:
        # With pytest-xdist (``-n 2 --dist loadgroup``) the Ray tests run in two lanes, one per worker: those on
        # the session's cluster (one cluster, its module-scoped deployments made once), and those that start
        # clusters or servegraph processes of their own, which spend most of their time waiting on them. A Ray-free
        # file (and an ANY_LANE one) is a group of its own: xdist hands those out as either lane nears its end,
        # which evens the two out.
        uses_cluster = "ray_cluster" in getattr(item, "fixturenames", ())
        if uses_cluster:
            item.add_marker(pytest.mark.ray)
        if item.path.name in ANY_LANE:
            group = item.path.name
        elif uses_cluster:
            group = "session-cluster"
        elif item.get_closest_marker("ray") is not None or item.path.name in OWN_CLUSTERS:
            group = "own-clusters"
        else:
            group = item.path.name
        item.add_marker(pytest.mark.xdist_group(group))
        groups[item] = group
    items.sort(key=lambda item: _hand_out_order(groups[item]))  # stable: each file keeps its own order


def pytest_configure(config):
    """xdist hands groups out in the order of the collection (see _hand_out_order), not by their size; the
    package and the tests are compiled to bytecode once (see _compile_once); and in a run that leaves out ``ray``
    tests, a test that starts Ray anyway fails and says so."""
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist's --no-loadscope-reorder
        config.option.loadscopereorder = False
    if not hasattr(config, "workerinput"):  # the main process: before xdist starts its workers
        _compile_once()
    markexpr = config.getoption("markexpr", "") or ""
    if "not ray" in markexpr.replace("  ", " "):
        import ray

        def refuse(*args, **kwargs):
            raise RuntimeError("this test starts Ray: mark it `ray` (pytestmark = pytest.mark.ray)")

        ray.init = refuse
