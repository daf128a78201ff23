"""A user's frames are told from servegraph's and Ray's by the package a file belongs to, never by its path's words.

Users keep code in folders called ``servegraph`` (git names a clone after its repository) and
``ray``; a constructor failing there must still be reported at its own line.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap

import pytest
import ray
import ray.cloudpickle

import servegraph
import servegraph as serve
from servegraph.runtime.common.user_frames import is_user_file

MODEL = textwrap.dedent(
    """\
    import servegraph as serve


    @serve.deployment
    class Model:
        def __init__(self):
            self.weights = self.load()

        def load(self):
            raise ValueError("bad model file")
    """
)
#: Where MODEL raises, and in which function.
RAISES_AT = "(model.py:10 in load)"


def test_servegraphs_and_rays_own_files_are_not_the_users():
    assert not is_user_file(servegraph.__file__)
    assert not is_user_file(os.path.join(os.path.dirname(ray.__file__), "actor.py"))
    assert not is_user_file(sys.modules["servegraph.runtime.common.user_frames"].__file__)


@pytest.mark.parametrize("folder", ["servegraph", "ray", "site/servegraph/runtime", "ray/_private"])
def test_a_users_file_under_a_folder_named_like_a_library_is_the_users(tmp_path, folder):
    assert is_user_file(str(tmp_path / folder / "model.py"))


def load_model(directory, module_name: str):
    """Import ``directory``/model.py as ``module_name``; replicas get the class by value, as for a notebook's."""
    directory.mkdir(parents=True)
    path = directory / "model.py"
    path.write_text(MODEL)
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    ray.cloudpickle.register_pickle_by_value(module)
    return module


@pytest.mark.ray
@pytest.mark.parametrize("folder", ["servegraph", "ray"])
def test_a_failing_constructor_in_a_folder_named_like_a_library_names_the_users_line(serve_app, http_port, tmp_path, folder):
    module_name = f"user_frames_model_in_{folder}"
    module = load_model(tmp_path / folder, module_name)
    try:
        with pytest.raises(serve.DeploymentError) as error:
            serve_app.run(module.Model.bind(), name=f"frames-{folder}", route_prefix=None, port=http_port)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(module)
        del sys.modules[module_name]
    assert f"ValueError: bad model file {RAISES_AT}" in str(error.value)


# However the error reaches the controller, the message names the user's line ----------------------


def _raised(cls: type) -> BaseException:
    try:
        cls()
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


class BrokenInit:
    def __init__(self):
        raise ValueError("bad model file")


BROKEN_AT = f"(test_user_frames.py:{BrokenInit.__init__.__code__.co_firstlineno + 1} in __init__)"


def _remote_error(exc: BaseException) -> ray.exceptions.RayTaskError:
    """The error as Ray hands it to the controller: the traceback only as text, across processes."""
    import traceback

    text = "".join(traceback.format_exception(exc))
    return ray.exceptions.RayTaskError("SyncReplica.initialize", text, exc)


def test_a_start_failure_names_the_users_line_however_it_arrives():
    """The constructor's reply, a call that raised, and the replica's death carrying its error as the cause
    all give the same one line (the last is what once lost the frame: the message depended on which came first).
    """
    from servegraph.runtime.common.user_frames import describe_user_error
    from servegraph.runtime.control.replicas import ReplicaStartError, describe_failure

    exc = _raised(BrokenInit)
    expected = f"ValueError: bad model file {BROKEN_AT}"
    remote = _remote_error(exc)
    arrivals = {
        "the constructor's reply": ReplicaStartError(describe_user_error(exc)),
        "a call that raised": remote.as_instanceof_cause(),
        "a Ray error without the user's type": remote,
        "the replica's death": ray.exceptions.ActorDiedError(cause=remote),
    }
    assert {how: describe_failure(error) for how, error in arrivals.items()} == dict.fromkeys(arrivals, expected)


def test_a_ray_error_with_no_user_frame_gives_the_error_alone():
    from servegraph.runtime.control.replicas import describe_failure

    rays_file = os.path.join(os.path.dirname(ray.__file__), "worker.py")
    error = ray.exceptions.RayTaskError("f", f'Traceback:\n  File "{rays_file}", line 1, in f\nOSError: gone\n', None)
    assert describe_failure(error) == "OSError: gone"



@pytest.mark.ray
def test_a_constructor_argument_that_fails_to_unpickle_in_the_replica_names_the_users_line(serve_app, http_port):
    """Its argument fails to unpickle in the replica: the error still reads as the user's error at the user's
    line (not Ray's, nor the half-made replica's)."""
    from pathlib import Path

    import replica_weights

    source = Path(replica_weights.__file__).read_text().splitlines()
    line = next(i for i, text in enumerate(source, 1) if "RAISES_HERE" in text)
    app = replica_weights.WeightsModel.bind(replica_weights.Weights("w.bin"))
    with pytest.raises(serve.DeploymentError) as error:
        serve_app.run(app, name="weights-fail", route_prefix=None, port=http_port)
    assert str(error.value).endswith(
        f"a replica failed to start: ValueError: bad model file (replica_weights.py:{line} in __setstate__)"
    ), str(error.value)
