"""The hello example end to end on the session's Ray cluster, over real HTTP."""

import hello
import httpx


def test_hello_over_http_and_handle(serve_app, http_port):
    handle = serve_app.run(hello.language_classifier, port=http_port)
    url = f"http://127.0.0.1:{http_port}/"
    reply = httpx.post(url, json={"language": "spanish", "name": "Dora"}, timeout=30)
    assert reply.status_code == 200
    assert reply.text == "Hola Dora"
    assert httpx.post(url, json={"language": "french", "name": "Dora"}, timeout=30).text == "Bonjour Dora"
    spanish = serve_app.get_deployment_handle("SpanishResponder")
    assert spanish.say_hello.remote("Ana").result() == "Hola Ana"  # a DeploymentHandle, as in Ray 2.7+
    assert handle.deployment_name == "LanguageClassifier"
