"""The hello example end to end: deploy it, send one request over HTTP, print the answer.

    python examples/run_hello.py        -> Hola Dora
"""

import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from hello import language_classifier  # noqa: E402

import servegraph as serve  # noqa: E402

if __name__ == "__main__":
    serve.run(language_classifier)  # a local Ray cluster, HTTP on 127.0.0.1:8000
    try:
        runpy.run_path(os.path.join(HERE, "hello_client.py"), run_name="__main__")  # prints: Hola Dora
    finally:
        serve.shutdown()
