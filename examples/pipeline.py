"""An InputNode pipeline: preprocess -> two models -> combine.

Run it:  servegraph run pipeline:app
Then:    curl -d '{"text": "Hello World"}' http://localhost:8000   -> {"length": 11, ...}
"""

import servegraph as serve
from servegraph import InputNode


@serve.deployment
def preprocess(text: str) -> str:
    return text.strip().lower()


@serve.deployment
class LengthModel:
    def __init__(self, weight: float):
        self.weight = weight

    def predict(self, text: str) -> float:
        return len(text) * self.weight


@serve.deployment(num_replicas=2)
class VowelModel:
    def predict(self, text: str) -> int:
        return sum(text.count(v) for v in "aeiou")


@serve.deployment
def combine(length: float, vowels: int) -> dict:
    return {"length": length, "vowels": vowels, "score": length + vowels}


with InputNode() as request:
    clean = preprocess.bind(request["text"])
    length = LengthModel.bind(1.0).predict.bind(clean)
    vowels = VowelModel.bind().predict.bind(clean)
    app = combine.bind(length, vowels)


if __name__ == "__main__":
    import ray

    handle = serve.run(app)
    print(ray.get(handle.remote({"text": "Hello World"})))  # {'length': 11.0, 'vowels': 3, 'score': 14.0}
