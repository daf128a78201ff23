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
from servegraph.runtime.user_frames import is_user_file

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
    assert not is_user_file(sys.modules["servegraph.runtime.user_frames"].__file__)


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
