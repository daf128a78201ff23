"""Client for hello.py: sends one request and prints the answer (Hola Dora).

Usage: python hello_client.py [URL]   (default http://localhost:8000, where `servegraph run` serves)
"""

import sys

# __hello_client_start__
import requests

url = sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8000"
response = requests.post(url, json={"language": "spanish", "name": "Dora"})
greeting = response.text
print(greeting)
# __hello_client_end__
