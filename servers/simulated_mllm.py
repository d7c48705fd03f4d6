"""A simulated MLLM of known accuracy: a stand-in for a real one, to run and measure ReFineG without a GPU.

No trained vision model runs on our machines, so the demo (`make demo`, servers/demo.py), `python -m bench
gmner` and the tests point the pipeline at this local OpenAI-compatible server instead. It answers
ReFineG's refinement and grounding requests from the gold annotations ("the world"): right with
probability `a`, otherwise wrong in realistic ways:
- refinement, per entity to check: right = keep a right entity, re-type or re-span a wrong
  one that overlaps a gold entity, reject the rest; wrong = reject or re-type a right
  entity, keep a wrong one; its "reasoning" says what the gold says and which answers are seeded errors;
- grounding, per asked entity: right = its gold boxes (none when ungroundable); wrong = a
  box shifted off its gold box (IoU < 0.5), a made-up box for an ungroundable entity, or
  no box for a groundable one.
Synthesis is answered WITHOUT the gold (simulated_writer.py recombines the seed sent in the request):
the gold holds the held-out split, which must not reach the tagger's training data.
It reads only what a real server receives, the request: the sample is found by its "Text:"
line (the first gold sample with that text wins), entities by name (data.find_name's rule),
the image size by the "Image size:" line. Every draw is seeded by (seed, stage, text, name),
so answers do not depend on request order or concurrency. Usage is estimated the way a
Qwen2.5-VL server counts: about 4 characters per text token, one token per 28x28 image patch.
Its model id names it and its accuracy (`simulated-mllm-acc0.80`): refineg.py marks a run against it
as simulated.

    python -m servers.simulated_mllm --gold examples/demo --accuracy 0.8 --port 8000   # Ctrl-C stops it

    with SimulatedMLLM(gold, sizes, SimConfig(refine_accuracy=0.8)) as sim:
        ... Client(ClientConfig(base_url=sim.url)) ...    # sim.url = http://127.0.0.1:PORT/v1

Left out on purpose: the json_object mode (the schema travels in response_format only), any
address but 127.0.0.1, and a reasoning for grounding answers (their schema has no field for one).
"""

import argparse
import base64
import dataclasses
import io
import json
import math
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

import formats
from app.rundir import SIMULATED
from data import (
    Box,
    DataError,
    Entity,
    InvalidSettings,
    Sample,
    find_name,
    require_valid,
    setting,
    without_spaces,
)
from images import ImageError, image_size
from servers.simulated_writer import write

BOX_FORMATS = ("abs", "norm1000", "norm1")  # grounding.FORMATS (a server does not import a stage)


@dataclass
class SimConfig:
    refine_accuracy: float = 1.0  # a: probability that a refinement decision is right
    ground_accuracy: float = 1.0  # a: probability that an entity's grounding answer is right
    synth_accuracy: float = 1.0  # probability that a written sentence is no fault for synth.py's checks
    box_format: str = "abs"  # the model's box convention (grounding.FORMATS): abs | norm1000 | norm1
    seed: int = 0  # every draw is seeded by (seed, stage, text, name)


def model_id(config: SimConfig) -> str:
    """The name /v1/models gives: what it is and how often it is right, so a run can record both.
    One accuracy for all -> "simulated-mllm-acc0.80"; else "simulated-mllm-refine0.80-ground0.60-synth1.00".
    """
    accs = (config.refine_accuracy, config.ground_accuracy, config.synth_accuracy)
    if len(set(accs)) == 1:
        return f"{SIMULATED}-acc{accs[0]:.2f}"
    return f"{SIMULATED}-refine{accs[0]:.2f}-ground{accs[1]:.2f}-synth{accs[2]:.2f}"


class SimulatedMLLM:
    def __init__(
        self,
        gold: list[Sample],
        sizes: dict[str, tuple[int, int]],
        config: SimConfig | None = None,
        port: int = 0,
    ):
        """`gold`: samples with gold entities and boxes; `sizes`: original (width, height) per sample id;
        `port` on 127.0.0.1, 0 = a free one (OSError when it is taken)."""
        self.config = config or SimConfig()
        self.model = model_id(self.config)
        self.by_text: dict[str, Sample] = {}
        for s in gold:
            self.by_text.setdefault(s.text, s)
        self.sizes = sizes
        self.counts = Counter()  # what was answered, and how (right / wrong per stage)
        self._lock = threading.Lock()
        self._server = _serve(self, port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"{self.model} server"
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "SimulatedMLLM":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        """Stop serving, close the connections clients keep open, and wait for every thread: nothing is
        left listening or running, also after an exception or Ctrl-C in the `with` block."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.close_connections()
        self._server.server_close()  # joins the threads of the requests

    # ------------------------------------------------------------ one request

    def answer(self, body: dict) -> dict:
        """The /chat/completions answer to one request body."""
        props = body["response_format"]["json_schema"]["schema"]["properties"]
        text = " ".join(part_texts(body["messages"][-1]))
        if "samples" in props:
            content = self._write(" ".join(part_texts(body["messages"][0])), text, props["samples"])
        elif "decisions" in props:
            sample, query = self._sample(text)
            types = props["decisions"]["items"]["properties"]["type"]["enum"]
            content = self._refine(sample, query, text, types, props["reasoning"].get("maxLength", 10**6))
        elif "entities" in props:
            sample, query = self._sample(text)
            max_boxes = props["entities"]["items"]["properties"]["boxes"].get("maxItems", 10**6)
            content = self._ground(sample, query, text, max_boxes)
        else:
            raise ValueError(
                f"not a synthesis, refinement or grounding request: schema properties {sorted(props)}"
            )
        self._count("answers")
        out = json.dumps(content)
        tokens = {"prompt_tokens": prompt_tokens(body["messages"]), "completion_tokens": len(out) // 4 + 1}
        return {
            "id": "sim",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": out}, "finish_reason": "stop"}
            ],
            "usage": {**tokens, "total_tokens": tokens["prompt_tokens"] + tokens["completion_tokens"]},
        }

    def _sample(self, text: str) -> tuple[Sample | None, str]:
        """The gold sample of a refinement or grounding request, found by its "Text:" line, and that text."""
        query = re.search(r"^Text: (.*)$", text, flags=re.M).group(1)
        sample = self.by_text.get(query)
        self._count("unknown_text" if sample is None else "requests")
        return sample, query

    def _write(self, system: str, user: str, samples_schema: dict) -> dict:
        """A synthesis answer from the request alone (simulated_writer.py): the gold is never read here."""
        n = samples_schema.get("minItems", 1)
        answer, faults = write(system, user, n, self.config.synth_accuracy, self.config.seed)
        self._count("synth_items", n)
        self._count("synth_faults", faults)
        return answer

    def _rng(self, stage: str, text: str, name: str) -> random.Random:
        return random.Random(f"{self.config.seed}|{stage}|{text}|{name}")

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n

    def _refine(
        self, sample: Sample | None, query: str, text: str, types: list[str], max_reasoning: int
    ) -> dict:
        """One decision per entity to check, and a reasoning that says what the gold says and whether this
        decision is one of the seeded errors."""
        checks = re.findall(r'^\[(\d+)\] "(.*)" \((\S+)\)$', text, flags=re.M)
        a = self.config.refine_accuracy
        notes = [f"Simulated MLLM: each decision is derived from the gold and right with probability {a}."]
        decisions = []
        for i, name, typ in checks:
            right_types, over, says = _gold_view(sample, name, typ)
            rng = self._rng("refine", query, f"{i}|{name}")
            right = rng.random() < self.config.refine_accuracy
            self._count("refine_right" if right else "refine_wrong")
            if right:
                d = _right_decision(sample, name, typ, right_types, over)
            else:
                d = _wrong_decision(name, typ, types, right_types, rng)
            decisions.append({"id": int(i), "action": d[0], "span": d[1], "type": d[2]})
            how = "so" if right else "but this answer is one of the seeded errors:"
            notes.append(f'[{i}] "{name}" ({typ}): {says}, {how} {d[0]} "{d[1]}" ({d[2]}).')
        return {"reasoning": " ".join(notes)[:max_reasoning], "decisions": decisions}

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


def _gold_view(sample: Sample | None, name: str, typ: str) -> tuple[set[str], Entity | None, str]:
    """What the gold says of an entity to check: the types gold gives its name, the gold entity overlapping
    it (when gold has no entity of that name), and the same in words."""
    if sample is None:
        return set(), None, "no gold sample has this text"
    right_types = {e.type for e in sample.entities if without_spaces(sample.name(e)) == without_spaces(name)}
    if right_types:
        return right_types, None, f"gold says {' or '.join(sorted(right_types))}"
    over = _overlapping(sample, name)
    if over is not None:
        return right_types, over, f'gold\'s entity here is "{sample.name(over)}" ({over.type})'
    return right_types, None, f'gold has no entity "{name}"'


def _right_decision(
    sample: Sample | None, name: str, typ: str, right_types: set[str], over: Entity | None
) -> tuple[str, str, str]:
    """(action, span, type) of a right answer: keep a right entity, re-type or re-span a wrong one that
    overlaps a gold entity, reject the rest."""
    if typ in right_types:
        return "keep", name, typ
    if right_types:
        return "change_type", name, sorted(right_types)[0]
    if over is not None:
        return "change_span", sample.name(over), over.type
    return "reject", name, typ


def _wrong_decision(
    name: str, typ: str, types: list[str], right_types: set[str], rng: random.Random
) -> tuple[str, str, str]:
    """(action, span, type) of a seeded error: reject or re-type a right entity, keep a wrong one."""
    if typ not in right_types:
        return "keep", name, typ
    others = [t for t in types if t != typ]
    if others and rng.random() < 0.5:
        return "change_type", name, rng.choice(others)
    return "reject", name, typ


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


def part_texts(message: dict) -> list[str]:
    """The texts of a chat message: its string content, or the text parts of a list content."""
    content = message["content"]
    if isinstance(content, str):
        return [content]
    return [p.get("text", "") for p in content if p.get("type") == "text"]


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


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that remembers its open connections, so that closing it can end the
    keep-alive connections of a client that is still alive (their threads would wait for a next request)."""

    daemon_threads = False
    block_on_close = True  # server_close() waits for the threads of the requests

    def __init__(self, address: tuple[str, int], handler: type):
        self.open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, tuple]:
        conn, address = super().get_request()
        with self._open_lock:
            self.open.add(conn)
        return conn, address

    def shutdown_request(self, request: socket.socket) -> None:
        with self._open_lock:
            self.open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            conns = list(self.open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # the waiting thread reads end-of-file and finishes
            except OSError:  # the client closed it first: nothing left to end
                continue


def _serve(sim: SimulatedMLLM, port: int) -> _Server:
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
                self.send(200, {"object": "list", "data": [{"id": sim.model, "object": "model"}]})
            else:
                self.send(404, {"error": {"message": f"no route {self.path}", "code": 404}})

        def do_POST(self):
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self.send(200, sim.answer(body))
            except (
                Exception
            ) as err:  # a request the simulator cannot read: counted, and a 400 as a real server
                sim._count("bad_requests")
                self.send(400, {"error": {"message": f"simulated MLLM: {err!r}", "code": 400}})

    return _Server(("127.0.0.1", port), Handler)


# ---------------------------------------------------------------- the command line


@dataclass
class ServeConfig:
    gold: str = setting(
        "", "the world the answers come from: a labelled dataset (CCKS folder, Twitter-GMNER, CoNLL)"
    )
    accuracy: float = setting(
        0.8, "chance an answer is right (refinement, grounding) or no fault (synthesis)"
    )
    box_format: str = setting(
        "abs", "the box convention to answer in: abs | norm1000 | norm1 (--ground-box-format)"
    )
    seed: int = setting(0, "every draw is seeded by (seed, stage, text, name)")
    port: int = setting(0, "port on 127.0.0.1; 0 = a free one (printed)")

    def __post_init__(self):
        require_valid(
            self,
            [
                (
                    "gold",
                    bool(self.gold) and Path(self.gold).exists(),
                    "a labelled dataset that exists (--gold is required)",
                ),
                ("accuracy", 0 <= self.accuracy <= 1, "a probability in [0, 1]"),
                ("box_format", self.box_format in BOX_FORMATS, " or ".join(BOX_FORMATS)),
                ("port", 0 <= self.port <= 65535, "a port in [0, 65535]"),
            ],
        )


def load_world(path: str) -> tuple[list[Sample], dict[str, tuple[int, int]]]:
    """The gold samples of a dataset and the original size of each image (a sample without a readable
    image is answered without boxes)."""
    samples = formats.read_dataset(path).samples
    sizes = {}
    for s in samples:
        if s.image:
            try:
                sizes[s.id] = image_size(s.image)
            except ImageError as err:
                print(f"simulated MLLM: {err}; its entities get no box")
    return samples, sizes


def parser() -> argparse.ArgumentParser:
    """One flag per ServeConfig field, with the help beside the field."""
    ap = argparse.ArgumentParser(
        prog="python -m servers.simulated_mllm", description=__doc__.split("\n\n")[0]
    )
    for f in dataclasses.fields(ServeConfig):
        ap.add_argument(
            f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, help=f.metadata["help"]
        )
    return ap


def main(argv: list[str] | None = None) -> int:
    """Serve until Ctrl-C (or SIGTERM); a bad flag, an unreadable --gold or a taken port is one error line
    and exit 2."""
    values = vars(parser().parse_args(argv))
    try:
        c = ServeConfig(**values)
    except InvalidSettings as err:
        for name, want in err.problems:
            print(
                f"error: --{name.replace('_', '-')}: expected {want}, got {values[name]!r}", file=sys.stderr
            )
        return 2
    try:
        gold, sizes = load_world(c.gold)
        config = SimConfig(c.accuracy, c.accuracy, c.accuracy, c.box_format, c.seed)
        sim = SimulatedMLLM(gold, sizes, config, c.port)
    except DataError as err:
        print(f"error: --gold {c.gold}: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(
            f"error: --port {c.port}: cannot listen there ({err.strerror}); --port 0 takes a free one",
            file=sys.stderr,
        )
        return 2
    with sim:
        print(
            f"{sim.model} serving {sim.url} (answers from the gold of {c.gold}); Ctrl-C stops it", flush=True
        )
        signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops it the way Ctrl-C does
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not break the closing
            print(f"\nstopped after {sim.counts['answers']} answers", flush=True)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
