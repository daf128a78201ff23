"""A FastAPI app as the ingress: routes, path and query parameters, validation, /docs, and a route
that calls another deployment through its handle.

Run it:  servegraph run fastapi_ingress:app   then   curl "127.0.0.1:8000/hello/Ana?greeting=Hola"
"""

from fastapi import FastAPI
from pydantic import BaseModel

import servegraph as serve

api = FastAPI(title="greeter")


class Order(BaseModel):
    item: str
    quantity: int


@serve.deployment
class Translator:
    def translate(self, word: str) -> str:
        return {"hello": "hola", "world": "mundo"}.get(word, word)


@serve.deployment
@serve.ingress(api)
class Greeter:
    def __init__(self, translator):
        self.translator = translator
        self.orders = 0

    @api.get("/hello/{name}")
    def hello(self, name: str, greeting: str = "Hello") -> str:
        return f"{greeting} {name}"

    @api.post("/orders")
    def order(self, order: Order) -> dict:
        self.orders += 1
        return {"item": order.item, "quantity": order.quantity, "orders_so_far": self.orders}

    @api.get("/translate/{word}")
    async def translate(self, word: str) -> dict:
        ref = await self.translator.translate.remote(word)
        return {"word": word, "translation": await ref}


app = Greeter.bind(Translator.bind())


if __name__ == "__main__":
    import httpx

    serve.run(app)
    print(httpx.get("http://127.0.0.1:8000/hello/Ana", params={"greeting": "Hola"}).json())
