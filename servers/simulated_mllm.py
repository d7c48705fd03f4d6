"""A simulated MLLM of known accuracy, for measuring what ReFineG's MLLM stages do to F1.

No trained vision model runs on our machines, so `bench.py gmner` and the tests point the
pipeline at this local OpenAI-compatible server instead. It answers ReFineG's refinement and
grounding requests from the gold annotations ("the world"): right with probability `a`,
otherwise wrong in realistic ways:
- refinement, per entity to check: right = keep a right entity, re-type or re-span a wrong
  one that overlaps a gold entity, reject the rest; wrong = reject or re-type a right
  entity, keep a wrong one;
- grounding, per asked entity: right = its gold boxes (none when ungroundable); wrong = a
  box shifted off its gold box (IoU < 0.5), a made-up box for an ungroundable entity, or
  no box for a groundable one.
It reads only what a real server receives, the request: the sample is found by its "Text:"
line (the first gold sample with that text wins), entities by name (data.find_name's rule),
the image size by the "Image size:" line. Every draw is seeded by (seed, stage, text, name),
so answers do not depend on request order or concurrency. Usage is estimated the way a
Qwen2.5-VL server counts: about 4 characters per text token, one token per 28x28 image patch.

    with SimulatedMLLM(gold, sizes, SimConfig(refine_accuracy=0.8)) as sim:
        ... Client(ClientConfig(base_url=sim.url)) ...    # sim.url = http://127.0.0.1:PORT/v1

Left out on purpose: synthesis (text-only; any LLM serves it) and the json_object mode (the
schema travels in response_format only).
"""

import base64
import io
import json
import math
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from data import Box, Entity, Sample, find_name, without_spaces


@dataclass
class SimConfig:
    refine_accuracy: float = 1.0  # a: probability that a refinement decision is right
    ground_accuracy: float = 1.0  # a: probability that an entity's grounding answer is right
    box_format: str = "abs"  # the model's box convention (grounding.FORMATS): abs | norm1000 | norm1
    seed: int = 0  # every draw is seeded by (seed, stage, text, name)


class SimulatedMLLM:
    def __init__(
        self, gold: list[Sample], sizes: dict[str, tuple[int, int]], config: SimConfig | None = None
    ):
        """`gold`: samples with gold entities and boxes; `sizes`: original (width, height) per sample id."""
        self.config = config or SimConfig()
        self.by_text: dict[str, Sample] = {}
        for s in gold:
            self.by_text.setdefault(s.text, s)
        self.sizes = sizes
        self.counts = Counter()  # what was answered, and how (right / wrong per stage)
        self._lock = threading.Lock()
        self._server = _serve(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "SimulatedMLLM":
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------ one request

    def answer(self, body: dict) -> dict:
        """The /chat/completions answer to one request body."""
        props = body["response_format"]["json_schema"]["schema"]["properties"]
        last = body["messages"][-1]["content"]
        text = (
            " ".join(p.get("text", "") for p in last if p.get("type") == "text")
            if isinstance(last, list)
            else last
        )
        query = re.search(r"^Text: (.*)$", text, flags=re.M).group(1)
        sample = self.by_text.get(query)
        if "decisions" in props:
            types = props["decisions"]["items"]["properties"]["type"]["enum"]
            content = self._refine(sample, query, text, types)
        elif "entities" in props:
            max_boxes = props["entities"]["items"]["properties"]["boxes"].get("maxItems", 10**6)
            content = self._ground(sample, query, text, max_boxes)
        else:
            raise ValueError(f"not a refinement or grounding request: schema properties {sorted(props)}")
        self._count("unknown_text" if sample is None else "requests")
        out = json.dumps(content)
        return {
            "id": "sim",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "simulated-mllm",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": out}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens(body["messages"]),
                "completion_tokens": len(out) // 4 + 1,
                "total_tokens": prompt_tokens(body["messages"]) + len(out) // 4 + 1,
            },
        }

    def _rng(self, stage: str, text: str, name: str) -> random.Random:
        return random.Random(f"{self.config.seed}|{stage}|{text}|{name}")

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _refine(self, sample: Sample | None, query: str, text: str, types: list[str]) -> dict:
        checks = re.findall(r'^\[(\d+)\] "(.*)" \((\S+)\)$', text, flags=re.M)
        decisions = []
        for i, name, typ in checks:
            gold = [] if sample is None else sample.entities
            right_types = {e.type for e in gold if without_spaces(sample.name(e)) == without_spaces(name)}
            rng = self._rng("refine", query, f"{i}|{name}")
            if rng.random() < self.config.refine_accuracy:
                self._count("refine_right")
                if typ in right_types:
                    d = ("keep", name, typ)
                elif right_types:
                    d = ("change_type", name, sorted(right_types)[0])
                else:
                    over = _overlapping(sample, name) if sample is not None else None
                    d = (
                        ("change_span", sample.name(over), over.type)
                        if over is not None
                        else ("reject", name, typ)
                    )
            else:
                self._count("refine_wrong")
                if typ in right_types:
                    others = [t for t in types if t != typ]
                    d = (
                        ("change_type", name, rng.choice(others))
                        if others and rng.random() < 0.5
                        else ("reject", name, typ)
                    )
                else:
                    d = ("keep", name, typ)
            decisions.append({"id": int(i), "action": d[0], "span": d[1], "type": d[2]})
        return {"reasoning": "simulated", "decisions": decisions}

    def _ground(self, sample: Sample | None, query: str, text: str, max_boxes: int) -> dict:
        asked = json.loads(re.search(r"^Entities: (.*)$", text, flags=re.M).group(1))
        size = re.search(r"^Image size: (\d+)x(\d+) pixels", text, flags=re.M)
        orig = self.sizes.get(sample.id) if sample is not None else None
        sent = (int(size.group(1)), int(size.group(2))) if size else orig
        items = []
        for a in asked:
            name = a["entity"]
            gold = (
                []
                if sample is None
                else [
                    b
                    for e in sample.entities
                    if without_spaces(sample.name(e)) == without_spaces(name)
                    for b in e.boxes
                ]
            )
            gold = [b for k, b in enumerate(gold) if b not in gold[:k]]
            rng = self._rng("ground", query, name)
            if orig is None:
                boxes = []
            elif rng.random() < self.config.ground_accuracy:
                self._count("ground_right")
                boxes = gold
            else:
                self._count("ground_wrong")
                if gold:
                    boxes = [_shifted(gold[0], orig, gold)] if rng.random() < 0.5 else []
                else:
                    w, h = orig[0] * rng.uniform(0.2, 0.5), orig[1] * rng.uniform(0.2, 0.5)
                    x, y = rng.uniform(0, orig[0] - w), rng.uniform(0, orig[1] - h)
                    boxes = [Box(x, y, x + w, y + h)]
            items.append(
                {
                    "entity": name,
                    "type": a["type"],  # the schema's maxItems binds a model too
                    "boxes": [self._written(b, orig, sent) for b in boxes[:max_boxes]],
                }
            )
        return {"entities": items}

    def _written(self, b: Box, orig: tuple[int, int], sent: tuple[int, int]) -> list:
        unit = {"abs": sent, "norm1000": (1000, 1000), "norm1": (1, 1)}[self.config.box_format]
        sx, sy = unit[0] / orig[0], unit[1] / orig[1]
        # clipped to the image: a few gold boxes reach past the size their xml states, and a model answers
        # inside the image it sees (the answer schema bounds every coordinate by the image size)
        xyxy = [
            min(max(v, 0.0), top) for v, top in zip([b.x1 * sx, b.y1 * sy, b.x2 * sx, b.y2 * sy], unit * 2)
        ]
        return [round(v, 4) for v in xyxy] if self.config.box_format == "norm1" else [round(v) for v in xyxy]


def _overlapping(sample: Sample, name: str) -> Entity | None:
    """The gold entity overlapping the first occurrence of `name` most, or None."""
    spans = find_name(sample.tokens, name)
    if not spans:
        return None
    s, e = spans[0]
    over = [
        (min(e, g.end) - max(s, g.start), -g.start, g)
        for g in sample.entities
        if min(e, g.end) > max(s, g.start)
    ]
    return max(over, key=lambda x: x[:2])[2] if over else None


def _shifted(box: Box, size: tuple[int, int], gold: list[Box]) -> Box:
    """A wrong box near a gold one: moved sideways by 70 % of its width (IoU 0.3 / 1.7 = 0.18 with it) when
    that stays inside the image and below IoU 0.5 with every gold box of the entity; else its top-left
    quarter (IoU 0.25 with it)."""
    w = box.x2 - box.x1
    for dx in (0.7 * w, -0.7 * w):
        moved = Box(box.x1 + dx, box.y1, box.x2 + dx, box.y2)
        if moved.x1 >= 0 and moved.x2 <= size[0] and all(moved.iou(g) < 0.5 for g in gold):
            return moved
    return Box(box.x1, box.y1, box.x1 + w / 2, box.y1 + (box.y2 - box.y1) / 2)


def prompt_tokens(messages: list[dict]) -> int:
    """Estimated prompt tokens: text characters / 4, plus one token per 28x28 patch of each image."""
    n = 0
    for m in messages:
        parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        for p in parts:
            if p.get("type") == "text":
                n += len(p["text"]) // 4 + 1
            elif p.get("type") == "image_url":
                raw = base64.b64decode(p["image_url"]["url"].split(",", 1)[1])
                with Image.open(io.BytesIO(raw)) as im:  # reads the header only
                    w, h = im.size
                n += math.ceil(w / 28) * math.ceil(h / 28)
    return n


def _serve(sim: SimulatedMLLM) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = -1

        def log_message(self, *args):
            pass

        def send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self.send(200, {"object": "list", "data": [{"id": "simulated-mllm", "object": "model"}]})
            else:
                self.send(404, {"error": {"message": f"no route {self.path}", "code": 404}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            try:
                self.send(200, sim.answer(body))
            except Exception as err:  # a request the simulator cannot read: a 400, as a real server would
                self.send(400, {"error": {"message": f"simulated MLLM: {err!r}", "code": 400}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    return server
