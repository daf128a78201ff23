"""Replica logs without Ray: LoggingConfig's validation, the TEXT and JSON lines, access lines, finding a request."""

from __future__ import annotations

import json
import logging
import os
import time

import pytest

import servegraph as serve
from servegraph.compiler import compile
from servegraph.dsl.options import LoggingConfig, as_logging_config
from servegraph.errors import OptionValueError
from servegraph.runtime.actors import replica_logging
from servegraph.runtime.client.log_search import request_lines, scan_dirs
from servegraph.runtime.common.context import RequestContext, reset_request, set_request

serve_logger = logging.getLogger("ray.serve")


@pytest.fixture
def replica_log(tmp_path):
    """Configure this process as replica ``ab12cd34`` of ``default/Model``, logging into tmp_path; undone after."""

    def configure(**config):
        logs = replica_logging.configure("default", "Model", "ab12cd34", LoggingConfig(logs_dir=str(tmp_path), **config))
        return logs.path

    outside = set_request(None)  # whatever request an earlier test left set, these start outside one
    yield configure
    reset_request(outside)
    replica_logging.unconfigure()


def lines(path: str) -> list[str]:
    replica_logging.flush()  # access lines reach the file a moment later: now, for this reader
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def in_request(request_id: str, route: str = "/hello"):
    return set_request(RequestContext(request_id, route, "default"))


# -- LoggingConfig ---------------------------------------------------------------------------------
def test_logging_config_takes_ray_serves_fields_and_values():
    config = as_logging_config({"encoding": "JSON", "log_level": 10, "additional_log_standard_attrs": ["funcName"]})
    assert (config.encoding, config.log_level, config.enable_access_log, config.logs_dir) == ("JSON", "DEBUG", True, None)
    assert config.additional_log_standard_attrs == ("funcName",)
    assert LoggingConfig() == as_logging_config({})


def test_ray_serves_own_logging_config_is_accepted():
    from ray.serve.schema import LoggingConfig as RayLoggingConfig

    config = as_logging_config(RayLoggingConfig(encoding="JSON", log_level="WARNING", enable_access_log=False))
    assert (config.encoding, config.log_level, config.enable_access_log) == ("JSON", "WARNING", False)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"encoding": "XML"}, r"logging_config.encoding: input should be 'TEXT' or 'JSON', got 'XML'"),
        ({"log_level": "LOUD"}, r"log_level 'LOUD' is not a level name"),
        ({"log_level": 15}, r"log_level 15 is not a level"),
        ({"log_levl": "INFO"}, r"logging_config.log_levl: unknown field; did you mean 'log_level'"),
        ({"additional_log_standard_attrs": ["funcname"]}, r"unknown LogRecord attribute 'funcname'; did you mean 'funcName'"),
    ],
)
def test_a_bad_logging_config_says_what_and_where(value, message):
    with pytest.raises(OptionValueError, match=message):
        as_logging_config(value)


def test_a_deployment_option_with_a_bad_logging_config_fails_at_its_line():
    with pytest.raises(OptionValueError, match=r"test_replica_logging.py:\d+.*logging_config"):

        @serve.deployment(logging_config={"encoding": "YAML"})
        def f(x):
            return x


@serve.deployment(logging_config={"log_level": "DEBUG"})
def quiet(x):
    return x


@serve.deployment
def plain(x):
    return x


def test_the_applications_logging_config_goes_to_deployments_that_set_none():
    graph = compile(quiet.bind(plain.bind(1)), logging_config=as_logging_config({"encoding": "JSON"}))
    configs = {spec.name: spec.options.logging_config for spec in graph.ir.deployments}
    assert configs["quiet"] == LoggingConfig(log_level="DEBUG")  # its own wins, whole (as in Ray Serve)
    assert configs["plain"] == LoggingConfig(encoding="JSON")
    assert {spec.name: spec.options.logging_config for spec in compile(quiet.bind(plain.bind(1))).ir.deployments}["plain"] is None


def test_options_take_a_logging_config_and_the_built_config_writes_it():
    graph = compile(plain.options(logging_config=LoggingConfig(encoding="JSON", log_level="ERROR")).bind(1))
    [entry] = graph.with_app(import_path="m:app").to_config()["applications"][0]["deployments"]
    assert entry["logging_config"] == {
        "encoding": "JSON",
        "log_level": "ERROR",
        "logs_dir": None,
        "enable_access_log": True,
        "additional_log_standard_attrs": [],
    }


# -- lines -----------------------------------------------------------------------------------------
def test_log_file_is_named_as_ray_serve_names_it(replica_log, tmp_path):
    path = replica_log()
    assert path == os.path.join(str(tmp_path), "replica_default_Model_ab12cd34.log")
    assert replica_logging.log_file_name("my app", "a/b", "x1") == "replica_my app_a_b_x1.log"


def test_text_lines_name_the_replica_and_the_request(replica_log):
    path = replica_log()
    serve_logger.info("loading the model")  # outside a request: no request id
    token = in_request("req-1")
    try:
        serve_logger.warning("hello from %s", "Model")
        logging.getLogger("servegraph.replica").info("servegraph's own line")
    finally:
        reset_request(token)
    first, second, third = lines(path)
    assert first.startswith("INFO ") and first.endswith(" default_Model ab12cd34 -- loading the model")
    assert second.startswith("WARNING ") and second.endswith(" default_Model ab12cd34 req-1 -- hello from Model")
    assert third.endswith(" default_Model ab12cd34 req-1 -- servegraph's own line")


def test_json_lines_carry_ray_serves_fields(replica_log):
    path = replica_log(encoding="JSON", additional_log_standard_attrs=("funcName",))
    token = in_request("req-2")
    try:
        serve_logger.info("scored", extra={"score": 0.5, "ray_serve_extra_fields": {"model": "m1"}})
    finally:
        reset_request(token)
    [line] = lines(path)
    record = json.loads(line)
    assert {k: record[k] for k in ("request_id", "route", "application", "deployment", "replica", "message", "levelname")} == {
        "request_id": "req-2",
        "route": "/hello",
        "application": "default",
        "deployment": "Model",
        "replica": "ab12cd34",
        "message": "scored",
        "levelname": "INFO",
    }
    assert record["component_name"] == "replica" and record["score"] == 0.5 and record["model"] == "m1"
    assert record["funcName"] == "test_json_lines_carry_ray_serves_fields"
    assert {"asctime", "filename", "lineno", "process", "timestamp_ns"} <= set(record)
    assert "serve_access_log" not in record and "log_to_stderr" not in record


def test_an_exception_is_written_with_its_traceback(replica_log):
    path = replica_log(encoding="JSON")
    try:
        raise KeyError("language")
    except KeyError:
        serve_logger.exception("it broke")
    record = json.loads(lines(path)[0])
    assert "KeyError: 'language'" in record["exc_text"]


def test_log_level_filters(replica_log):
    path = replica_log(log_level="WARNING")
    serve_logger.info("not written")
    serve_logger.debug("not written either")
    serve_logger.warning("written")
    replica_logging.access_log("predict", True, 1.0, None)  # INFO: below the level too
    assert [line.split(" -- ")[1] for line in lines(path)] == ["written"]


def test_access_lines_follow_ray_serves_format_and_can_be_turned_off(replica_log):
    path = replica_log()
    token = in_request("req-3")
    try:
        replica_logging.access_log("say_hello", True, 1.26, None)
        replica_logging.access_log("say_hello", False, 2.0, ValueError("bad"))
    finally:
        reset_request(token)
    token = in_request("req-3", "/hi")
    try:
        replica_logging.access_log("__call__", True, 3.04, None, ("POST", 200))
    finally:
        reset_request(token)
    text = lines(path)
    assert text[0].endswith("ab12cd34 req-3 -- CALL say_hello OK 1.3ms")
    assert text[1].endswith("ab12cd34 req-3 -- Request failed.") and "ValueError: bad" in "\n".join(text)
    assert text[-2].endswith("ab12cd34 req-3 -- CALL say_hello ERROR 2.0ms")
    assert text[-1].endswith("ab12cd34 req-3 -- POST /hi 200 3.0ms")

    path = replica_log(enable_access_log=False)  # reconfigured: the same file, access lines stop
    replica_logging.access_log("say_hello", True, 1.0, None)
    serve_logger.info("still logging")
    assert lines(path)[len(text):] == [lines(path)[-1]] and lines(path)[-1].endswith("-- still logging")


def test_an_http_request_gets_its_http_line_not_a_call_line(replica_log):
    path = replica_log()
    observers = replica_logging.telemetry.observers()
    assert replica_logging.access_log in observers  # configure registers it, once
    token = in_request("req-4", "/")
    try:  # as the replica does: the request's observers are told, with its HTTP method and status, in its context
        for observer in observers:
            observer("__call__", False, 1.0, KeyError("name"), ("POST", 500))
    finally:
        reset_request(token)
    text = lines(path)
    assert text[0].endswith("req-4 -- Request failed.") and "KeyError: 'name'" in text
    assert text[-1].endswith("req-4 -- POST / 500 1.0ms") and "CALL" not in "\n".join(text)


def test_an_idle_process_flushes_its_access_lines_at_once_but_not_on_every_request(replica_log):
    path = replica_log()

    def on_disk() -> list[str]:  # what a reader in another process sees (no flush first)
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()

    file = replica_logging._INSTALLED.access_file
    token = in_request("req-idle")
    try:
        replica_logging.access_log("say_hello", True, 1.0, None)
        file.flushed_at = 0.0  # no flush for a long time: at rest, the line goes out now
        replica_logging.flush_pending()
        assert len(on_disk()) == 1 and not file.unflushed
        replica_logging.access_log("say_hello", True, 2.0, None)
        replica_logging.flush_pending()  # just flushed: left to the flusher thread, which writes it soon after
        assert len(on_disk()) == 1 and file.unflushed
    finally:
        reset_request(token)
    deadline = time.monotonic() + 10
    while len(on_disk()) < 2 and time.monotonic() < deadline:
        time.sleep(replica_logging.FLUSH_AFTER_S)
    assert on_disk()[-1].endswith("req-idle -- CALL say_hello OK 2.0ms")


def test_an_access_line_written_directly_reads_as_loggings_own(replica_log):
    path = replica_log()
    token = in_request("req-5")
    try:
        replica_logging.access_log("say_hello", True, 1.26, None)  # written directly (TEXT, only our handlers)
        replica_logging._serve.info("CALL say_hello OK 1.3ms", extra=replica_logging._ACCESS)  # through logging
    finally:
        reset_request(token)
    direct, logged = lines(path)
    assert direct.split(" ", 3)[3] == logged.split(" ", 3)[3] == "default_Model ab12cd34 req-5 -- CALL say_hello OK 1.3ms"
    assert direct.split(" ")[:1] == logged.split(" ")[:1] == ["INFO"]
    assert len(direct.split(" ")[2]) == len(logged.split(" ")[2]) == len("10:00:00,123")


def test_access_lines_go_through_logging_when_the_user_added_a_handler(replica_log):
    replica_log()
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    serve_logger.addHandler(handler)
    try:
        replica_logging.access_log("say_hello", True, 1.0, None)
    finally:
        serve_logger.removeHandler(handler)
    assert [r.getMessage() for r in seen] == ["CALL say_hello OK 1.0ms"] and seen[0].serve_access_log


def test_access_lines_stay_out_of_stderr_and_user_lines_go_there_too(replica_log, capsys):
    replica_log()
    serve_logger.info("user line")
    replica_logging.access_log("m", True, 1.0, None)
    err = capsys.readouterr().err
    assert "default_Model ab12cd34 -- user line" in err and "CALL m OK" not in err


def test_with_ray_serves_log_to_stderr_off_what_the_replica_prints_goes_to_its_log(replica_log, monkeypatch, capsys):
    import sys

    monkeypatch.setenv("RAY_SERVE_LOG_TO_STDERR", "0")
    before = sys.stdout, sys.stderr
    path = replica_log()
    token = in_request("req-7")
    try:
        print("printed in a request")
        print("half a line", end="")
        print(" and the rest")
        sys.stderr.write("to stderr\n")
        serve_logger.info("a logger line")
    finally:
        reset_request(token)
    replica_logging.unconfigure()
    assert (sys.stdout, sys.stderr) == before
    assert [line.split(" req-7 -- ", 1)[1] for line in lines(path)] == [
        "printed in a request", "half a line and the rest", "to stderr", "a logger line",
    ]
    assert capsys.readouterr().err == ""  # the loggers no longer write to stderr either


def test_reconfiguring_moves_the_file_to_the_new_logs_dir(replica_log, tmp_path):
    replica_log()
    moved = tmp_path / "elsewhere"
    logs = replica_logging.configure("default", "Model", "ab12cd34", LoggingConfig(logs_dir=str(moved), encoding="JSON"))
    serve_logger.info("moved")
    assert json.loads(lines(logs.path)[0])["message"] == "moved"
    assert os.path.dirname(logs.path) == str(moved)


def test_a_proxys_log_is_ray_serves_proxy_log(tmp_path):
    try:
        logs = replica_logging.configure_proxy("10.0.0.7", LoggingConfig(logs_dir=str(tmp_path)))
        token = in_request("req-5")
        try:
            replica_logging.proxy_access_log({"method": "GET", "path": "/hello/x"}, "/hello", 200, 4.56)
            logging.getLogger("servegraph.proxy").warning("a replica died; retrying")
        finally:
            reset_request(token)
        replica_logging.proxy_access_log({"method": "GET", "path": "/-/healthz"}, "", 200, 0.1)  # no one's request
        assert logs.path == os.path.join(str(tmp_path), "proxy_10.0.0.7.log")
        first, second = lines(logs.path)
        assert first.startswith("INFO ") and first.endswith(" proxy 10.0.0.7 req-5 -- GET /hello 200 4.6ms")
        assert second.endswith(" proxy 10.0.0.7 req-5 -- a replica died; retrying")

        logs = replica_logging.configure_proxy("10.0.0.7", LoggingConfig(logs_dir=str(tmp_path), encoding="JSON"))
        token = in_request("req-6")
        try:
            replica_logging.proxy_access_log({"method": "POST", "path": "/"}, "/", 500, 1.0)
        finally:
            reset_request(token)
        record = json.loads(lines(logs.path)[-1])
        assert {k: record[k] for k in ("request_id", "route", "component_name", "component_id", "message")} == {
            "request_id": "req-6", "route": "/", "component_name": "proxy", "component_id": "10.0.0.7", "message": "POST / 500 1.0ms",
        }
        found = scan_dirs([str(tmp_path)], "req-6")
        assert [(line.deployment, line.replica) for line in found] == [("proxy", "10.0.0.7")]
    finally:
        replica_logging.unconfigure()


def test_the_log_file_rotates_as_rays_logs_do(tmp_path):
    path = str(tmp_path / "replica.log")
    handler = replica_logging.LogFile(path, max_bytes=100, backups=2)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(12):
        handler.handle(logging.makeLogRecord({"msg": f"line {i:02d} " + "x" * 20}))
    handler.close()
    assert sorted(os.listdir(tmp_path)) == ["replica.log", "replica.log.1", "replica.log.2"]
    assert all(os.path.getsize(tmp_path / name) < 100 for name in os.listdir(tmp_path))
    assert lines(path)[-1].startswith("line 11 ")


# -- finding a request -----------------------------------------------------------------------------
def test_a_requests_lines_are_found_in_text_and_json_logs(replica_log, tmp_path):
    path = replica_log()
    for request_id in ("req-a", "req-b"):
        token = in_request(request_id)
        try:
            try:
                raise RuntimeError(f"boom {request_id}")
            except RuntimeError:
                serve_logger.exception("failed")
        finally:
            reset_request(token)
    replica_logging.configure("default", "Model", "ab12cd34", LoggingConfig(logs_dir=str(tmp_path), encoding="JSON"))
    token = in_request("req-a")
    try:
        serve_logger.info("now in JSON")
    finally:
        reset_request(token)
    found = scan_dirs([str(tmp_path)], "req-a")
    text = [line.text for line in sorted(found)]
    assert text[0].endswith("req-a -- failed") and any("RuntimeError: boom req-a" in t for t in text)
    assert not any("req-b" in t for t in text)
    assert json.loads(text[-1])["message"] == "now in JSON"
    assert {(line.replica, line.deployment) for line in found} == {("ab12cd34", "default_Model"), ("ab12cd34", "Model")}
    assert list(request_lines(lines(path), "nope")) == []
