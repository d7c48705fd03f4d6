"""labelling/labelstudio.py against the real Label Studio (test infrastructure, not the paper).

tests/labelling/test_labelstudio.py reads hand-written exports; here Label Studio itself takes the project
that `write_labelstudio` writes (it validates the labelling config against the tasks on import), serves the
images through its local-file serving, stores annotations made through its API, and exports them as JSON;
`formats.read_dataset` with labelling's export reader must read that export back into the samples the
annotations say. Oracle: the demo's gold samples, with the changes the test's annotator made; for rotated
photos (EXIF orientation), the upright image of test_orientation.py with its red rectangle.

    make label-studio       # once: Label Studio in a venv of its own in ~/.cache/refineg-labelstudio (~4 min)
    python -m pytest -q -m labelstudio tests/real/test_labelstudio_real.py

Without the build every test here is skipped with a reason naming `make label-studio`. One server per
module on a free 127.0.0.1 port, its database and media in a temporary folder, stopped by its PID at the
end whatever happens (the `studio` fixture). Left out on purpose: the browser front end (the API stores
and exports exactly what the front end sends), PostgreSQL.
"""

import copy
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from llama_server import _die_with_parent, free_port
from PIL import Image
from test_orientation import RED, TYPES, drawn_upright, is_upright, rotated, untagged

import formats
import images
from data import Box, DataError, Dataset, Entity, Sample
from labelling import labelstudio, suggest

CACHE = os.environ.get("REFINEG_LABELSTUDIO_CACHE", os.path.expanduser("~/.cache/refineg-labelstudio"))
DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"
TOKEN = "refineg-test-token"  # label-studio ignores a --user-token of 5 characters or fewer
START_S = 600  # a first start migrates a new SQLite database: minutes on a busy 2-core machine


def read_dataset(path: Path) -> Dataset:
    """formats.read_dataset as every dataset flag calls it: with labelling's export reader."""
    return formats.read_dataset(path, readers=[labelstudio.EXPORT])


def _info() -> dict | None:
    """What tests/labelstudio/build.sh wrote last, or None when the build is missing or incomplete."""
    try:
        with open(os.path.join(CACHE, "labelstudio.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if os.path.isfile(info.get("label_studio", "")) else None


INFO = _info()
pytestmark = [
    pytest.mark.labelstudio,
    pytest.mark.skipif(INFO is None, reason=f"no Label Studio in {CACHE}: build it with `make label-studio`"),
]


class Studio:
    """The API of a running Label Studio: base URL and a session that sends the user's token."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Token {TOKEN}"  # the legacy token: --enable-legacy-api-token

    def call(self, method: str, path: str, expect: int = 200, **kwargs) -> requests.Response:
        r = self.http.request(method, self.base + path, timeout=60, **kwargs)
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r


def start(data: Path, port: int) -> subprocess.Popen:
    """label-studio start on 127.0.0.1:port, its user made from the flags, local files served from /."""
    env = dict(os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(data), LOCAL_FILES_SERVING_ENABLED="true")
    env |= {"LOCAL_FILES_DOCUMENT_ROOT": "/", "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false"}
    cmd = [INFO["label_studio"], "start", "--no-browser", "--data-dir", str(data)]
    cmd += ["--internal-host", "127.0.0.1", "--port", str(port), "--username", "annotator@example.com"]
    cmd += ["--password", "refineg-test", "--user-token", TOKEN, "--enable-legacy-api-token"]
    log = open(data / "server.log", "w")  # the child writes it until it is stopped
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    data = tmp_path_factory.mktemp("labelstudio")
    port = free_port()
    proc = start(data, port)
    try:
        api = Studio(port)
        t0 = time.monotonic()
        while time.monotonic() - t0 < START_S:
            assert proc.poll() is None, f"label-studio exited: {(data / 'server.log').read_text()[-2000:]}"
            try:
                if api.http.get(api.base + "/api/version", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"label-studio not up after {START_S} s: {(data / 'server.log').read_text()[-2000:]}")
        print(f"label-studio up in {time.monotonic() - t0:.0f} s")
        yield api
    finally:  # whatever happened: stop it by its PID
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def project(api: Studio, run: Path) -> tuple[int, dict[str, int], list[dict]]:
    """The demo's first three samples as the suggestions of a run, imported into a new project: its id,
    the Label Studio task id of each sample id, and the tasks as written."""
    demo = read_dataset(DEMO)
    images = run / "suggested" / "images"
    images.mkdir(parents=True)
    rows = []
    for k, s in enumerate(demo.samples[:3]):
        shutil.copy(s.image, images / Path(s.image).name)
        rows.append((s, 0.9 - k / 10, f"why {k}"))
    labelstudio.write_labelstudio(rows, demo, run / "labelstudio", 1, labelstudio.image_prefix("", images))
    config = (run / "labelstudio" / "config.xml").read_text()
    pid = api.call("POST", "/api/projects", 201, json={"title": "refineg", "label_config": config}).json()[
        "id"
    ]
    # Local files are served only from a folder that a project's local storage names
    storage = {"project": pid, "path": str(images), "title": "suggested images", "use_blob_urls": False}
    api.call("POST", "/api/storages/localfiles", 201, json=storage)
    tasks = json.loads((run / "labelstudio" / "tasks.json").read_text())
    done = api.call("POST", f"/api/projects/{pid}/import", 201, json=tasks).json()
    assert (done["task_count"], done["prediction_count"], done["annotation_count"]) == (3, 3, 0)
    listed = api.call("GET", "/api/tasks", params={"project": pid}).json()["tasks"]
    return pid, {t["data"]["sample_id"]: t["id"] for t in listed}, tasks


def annotate(api: Studio, task_id: int, result: list, **fields) -> None:
    api.call("POST", f"/api/tasks/{task_id}/annotations/", 201, json={"result": result, **fields})


def export(api: Studio, pid: int, run: Path) -> Path:
    """The project's JSON export, every task (without download_all_tasks only annotated ones), saved where
    the docs say: beside config.xml and types.txt."""
    params = {"exportType": "JSON", "download_all_tasks": "true"}
    tasks = api.call("GET", f"/api/projects/{pid}/export", params=params).json()
    path = run / "labelstudio" / "export.json"
    path.write_text(json.dumps(tasks))
    return path


def test_label_studio_checks_the_tasks_against_the_config_and_serves_the_images(studio, tmp_path):
    pid, ids, tasks = project(studio, tmp_path)
    served = studio.call("GET", tasks[0]["data"]["image"])  # /data/local-files/?d=...
    assert served.content == (tmp_path / "suggested" / "images" / "001.jpg").read_bytes()
    no_text = copy.deepcopy(tasks[0])
    del no_text["data"]["text"]  # the config's <Text value="$text"> is checked against every task
    refused = studio.call("POST", f"/api/projects/{pid}/import", 400, json=[no_text])
    assert '"text" key is expected in task data' in str(refused.json()["validation_errors"])
    stored = studio.call("GET", f"/api/tasks/{ids['001']}").json()
    assert (
        stored["data"] == tasks[0]["data"]
        and stored["predictions"][0]["result"] == tasks[0]["predictions"][0]["result"]
    )


def annotator(studio: Studio, ids: dict[str, int], tasks: list[dict]) -> None:
    """001: Leopard 2's second box moved 10 % right, Panzerbataillon 203 retyped, Munster selected from
    its third letter and said not in the image; 002: accepted as predicted, then redone with only the
    carrier (the later annotation counts), then cancelled (never counts); 003: left alone."""
    first = copy.deepcopy(tasks[0]["predictions"][0]["result"])
    region = {r.get("id"): r for r in first}
    region["e0b1"]["value"]["x"] += 10
    region["e1"]["value"]["labels"] = ["location"]
    region["e2"]["value"]["start"] += 2  # "nster": widened back to the token
    choice = dict(region["e2"]["value"], choices=[labelstudio.NOT_IN_IMAGE])
    first.append(dict(region["e2"], from_name="grounding", type="choices", value=choice))
    annotate(studio, ids["001"], first)
    second = tasks[1]["predictions"][0]["result"]
    annotate(studio, ids["002"], second)
    time.sleep(0.01)
    carrier = [r for r in second if r.get("id") in ("e0", "e0b0") or r.get("to_id") == "e0b0"]
    annotate(studio, ids["002"], carrier)
    annotate(studio, ids["002"], [], was_cancelled=True)


def test_the_export_of_annotations_made_in_label_studio_reads_back_as_they_say(studio, tmp_path):
    pid, ids, tasks = project(studio, tmp_path)
    annotator(studio, ids, tasks)
    path = export(studio, pid, tmp_path)
    said = "2 of 3 tasks read; 1 no annotation, 1 several, 1 snapped, 1 undecided"
    with pytest.warns(UserWarning, match=said):
        back = read_dataset(path)
    demo = read_dataset(DEMO)
    leopard, carrier_box = demo.samples[0].entities[0].boxes, demo.samples[1].entities[0].boxes
    moved = Box(leopard[1].x1 + 64, leopard[1].y1, leopard[1].x2 + 64, leopard[1].y2)  # 10 % of 640 px
    assert [(s.id, s.tokens, s.image) for s in back.samples] == [
        (s.id, s.tokens, str((tmp_path / "suggested" / "images" / f"{s.id}.jpg").resolve()))
        for s in demo.samples[:2]
    ]
    expected = [
        [Entity(1, 3, "vehicle", [leopard[0], moved]), Entity(7, 9, "location"), Entity(15, 16, "location")],
        [Entity(3, 5, "vessel", carrier_box)],
    ]
    for sample, want in zip(back.samples, expected, strict=True):
        assert [(e.start, e.end, e.type) for e in sample.entities] == [(e.start, e.end, e.type) for e in want]
        got = [[vars(b) for b in e.boxes] for e in sample.entities]
        assert got == [[pytest.approx(vars(b)) for b in e.boxes] for e in want]


def test_a_label_label_studio_accepts_but_types_txt_lacks_is_refused_on_reading(studio, tmp_path):
    pid, ids, tasks = project(studio, tmp_path)
    result = copy.deepcopy(tasks[2]["predictions"][0]["result"])
    result[0]["value"]["labels"] = ["helicopter"]  # Label Studio stores labels outside its config
    annotate(studio, ids["003"], result)
    path = export(studio, pid, tmp_path)
    with pytest.raises(DataError, match=r"task 2 .*sample '003'.*label 'helicopter' is not in types.txt"):
        read_dataset(path)


def test_a_rotated_photo_is_served_upright_and_its_boxes_read_back_where_they_were_drawn(studio, tmp_path):
    """Two phone photos, tagged 6 (stored sideways) and 3 (upside down), go through suggest's copies and
    Label Studio: it serves them upright and untagged (so any browser shows the frame the boxes are in); the
    prediction on the first is accepted unchanged, the rectangle on the second drawn by the annotator in
    the upright frame; both read back on the oracle's red rectangle (test_orientation.py)."""
    shot = tmp_path / "camera"
    shot.mkdir()
    rows = []
    for k in (6, 3):
        image = str(rotated(shot, k, name=f"r{k}"))
        entities = [Entity(0, 1, "PER", [Box(*RED)] if k == 6 else [])]
        rows.append((Sample(f"r{k}", ["Anna"], image, entities), 0.5, "Anna"))
    folder = tmp_path / "suggested"
    suggest.write_suggestions([suggest.Suggestion(s, d, w) for s, d, w in rows], TYPES, folder)
    prefix = labelstudio.image_prefix("", folder / "images")
    labelstudio.write_labelstudio(rows, TYPES, tmp_path / "labelstudio", 1, prefix)
    config = (tmp_path / "labelstudio" / "config.xml").read_text()
    pid = studio.call("POST", "/api/projects", 201, json={"title": "rotated", "label_config": config}).json()
    storage = {"project": pid["id"], "path": str(folder / "images"), "title": "up", "use_blob_urls": False}
    studio.call("POST", "/api/storages/localfiles", 201, json=storage)
    tasks = json.loads((tmp_path / "labelstudio" / "tasks.json").read_text())
    studio.call("POST", f"/api/projects/{pid['id']}/import", 201, json=tasks)
    listed = studio.call("GET", "/api/tasks", params={"project": pid["id"]}).json()["tasks"]
    for t in listed:
        with Image.open(io.BytesIO(studio.call("GET", t["data"]["image"]).content)) as served:
            assert is_upright(served) and untagged(served)
        sid = t["data"]["sample_id"]
        offered = next(w for w in tasks if w["data"]["sample_id"] == sid)["predictions"][0]["result"]
        annotate(studio, t["id"], offered if sid == "r6" else drawn_upright(sid)["annotations"][0]["result"])
    back = read_dataset(export(studio, pid["id"], tmp_path))
    assert [s.id for s in back.samples] == ["r6", "r3"]
    for s in back.samples:
        box = s.entities[0].boxes[0]
        assert len(s.entities[0].boxes) == 1 and vars(box) == pytest.approx(vars(Box(*RED)))
        centre = images.open_image(s.image).getpixel(((box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2))
        assert centre[0] > 180 and max(centre[1:]) < 80  # the colour under the box: the rectangle's
