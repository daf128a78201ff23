"""Client for hello.py: sends the seed's request and prints the answer (Hola Dora)."""

# __hello_client_start__
import requests

response = requests.post("http://localhost:8000", json={"language": "spanish", "name": "Dora"})
greeting = response.text
print(greeting)
# __hello_client_end__
