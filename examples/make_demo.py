"""Draw the tiny demo dataset of ReFineG: military-domain image-text pairs in the CCKS layout.

The real CCKS-2025 GMNER data cannot be shipped, so the demo is made here:
32 captions about named military objects (a tank labelled "Leopard 2", a
ship "USS Nimitz", an aircraft "Eurofighter", ...) and a Pillow drawing of
each scene (sky, sea or ground) with those objects painted on it, their name
written on their body. Output, in `examples/demo/`:

    text.json     {id: {"text"}}
    entity.json   {id: [{"name", "label", "bnd": {xmin, ymin, xmax, ymax} | null}]}, one record per box
    images/<id>.jpg
    types.txt     the six types and a "do not extract" line, in the format of the CCKS types.txt

Every box is the exact pixel extent of its drawn object: each object is drawn
on its own transparent layer and the box is that layer's alpha extent
(x2, y2 exclusive, as Pillow's getbbox), measured before JPEG compression.
What the data exercises: ungroundable entities (places, units, organisations,
and named objects the caption mentions but the picture does not show),
entities with two boxes (two objects with one name), a name occurring twice
in one caption, a short name inside a longer one (NATO in "Standing NATO
Maritime Group 1"), unnamed objects next to entity-free captions ("tank",
"ship" are not entities), and image sizes from 320x240 to 640x480 with two
portrait ones, so box conversions between sizes are exercised.

    python -m examples.make_demo            # rewrites examples/demo/ (deterministic)

Left out on purpose: realism. The pictures are flat cartoons; they only need
to be images with boxes whose right answers are known.
"""

import json
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from formats import stats
from formats.ccks import read_ccks  # the script checks its own output with the real reader

HERE = Path(__file__).resolve().parent

OUT = HERE / "demo"
SEED = 2025
JPEG_QUALITY = 80  # keeps the folder well under 1 MB
TYPE_OF = {
    "tank": "vehicle",
    "howitzer": "vehicle",
    "jet": "aircraft",
    "transport": "aircraft",
    "heli": "aircraft",
    "ship": "vessel",
    "sub": "vessel",
    "launcher": "weapon",
}
# nominal (width, height) of each drawing at scale 1, used to place objects side by side
UNIT = {
    "tank": (100, 42),
    "howitzer": (120, 44),
    "jet": (120, 40),
    "transport": (150, 50),
    "heli": (110, 48),
    "ship": (160, 62),
    "sub": (150, 34),
    "launcher": (110, 56),
}

TYPES_TXT = """\
[Entity Type Description] Here are 6 named entity types you need to identify:
1. vehicle: Ground-based military machines, e.g. tanks (Leopard 2), infantry fighting vehicles (PUMA), \
armoured transport (Boxer), reconnaissance vehicles (Fennek), artillery (Panzerhaubitze 2000)
2. aircraft: Flying machines for military use, e.g. fighter jets (Eurofighter, Tornado), \
transport aircraft (A400M), helicopters (NH-90, Tiger)
3. vessel: Watercraft for military use, e.g. carriers (USS Nimitz), frigates (Sachsen), submarines (U32)
4. weapon: Devices or systems for combat or defence, e.g. air defence (PATRIOT), rocket launchers (MARS), \
rifles (G36)
5. location: Geographical or geopolitical areas, e.g. countries (Germany, Lithuania), towns (Munster, Kiel), \
bodies of water (Baltic Sea)
6. other: Named entities not fitting the above, e.g. units (Panzerbataillon 203), organisations (NATO, UN, \
Bundeswehr), naval groups (Standing NATO Maritime Group 1)

**DO NOT** extract entities without specific name (e.g.: gun, ship, tank, aircraft, helicopter, soldier)
"""

# (size, scene, drawn objects [(kind, name or None for an unnamed object, copies)], caption,
#  ungroundable entities [(name, type)] -- everything named in the caption and not drawn)
SPECS = [
    (
        (640, 480),
        "land",
        [("tank", "Leopard 2", 2)],
        "Two Leopard 2 main battle tanks of Panzerbataillon 203 advance across the training area near "
        "Munster.",
        [("Panzerbataillon 203", "other"), ("Munster", "location")],
    ),
    (
        (480, 360),
        "sea",
        [("ship", "USS Nimitz", 1)],
        "The aircraft carrier USS Nimitz sails through the Mediterranean Sea during a NATO exercise.",
        [("Mediterranean Sea", "location"), ("NATO", "other")],
    ),
    (
        (640, 480),
        "air",
        [("jet", "Eurofighter", 1)],
        "A Eurofighter of Tactical Air Force Squadron 74 climbs steeply after take-off.",
        [("Tactical Air Force Squadron 74", "other")],
    ),
    (
        (400, 300),
        "land",
        [("tank", "PUMA", 1)],
        "Soldiers dismount from the PUMA infantry fighting vehicle during a drill.",
        [],
    ),
    (
        (360, 480),
        "air",
        [("heli", "NH-90", 1)],
        "An NH-90 helicopter hovers over the landing zone in Lithuania.",
        [("Lithuania", "location")],
    ),
    (
        (320, 240),
        "land",
        [("tank", None, 1)],
        "A soldier checks the tracks of his tank before the march.",
        [],
    ),
    (
        (500, 375),
        "sea",
        [("ship", "Sachsen", 1)],
        "The frigate Sachsen fires a missile in the Baltic Sea.",
        [("Baltic Sea", "location")],
    ),
    (
        (640, 480),
        "land",
        [("launcher", "PATRIOT", 1)],
        "The Bundeswehr deployed a PATRIOT air defence system to protect the airfield.",
        [("Bundeswehr", "other")],
    ),
    (
        (480, 360),
        "air",
        [("jet", "Tornado", 1), ("jet", "Eurofighter", 1)],
        "A Tornado and a Eurofighter fly in formation over Germany.",
        [("Germany", "location")],
    ),
    (
        (400, 300),
        "land",
        [("tank", "Boxer", 1)],
        "A Boxer armoured transport vehicle drives past a Fennek reconnaissance vehicle.",
        [("Fennek", "vehicle")],
    ),
    (
        (640, 480),
        "sea",
        [("sub", "U32", 1)],
        "The submarine U32 surfaces in the North Sea after a long patrol.",
        [("North Sea", "location")],
    ),
    ((320, 240), "air", [], "Clouds gather over the air base as the weather turns.", []),
    (
        (480, 360),
        "land",
        [("tank", "Leopard 2", 1), ("tank", "PUMA", 1)],
        "A Leopard 2 and a PUMA wait at the edge of the forest.",
        [],
    ),
    (
        (360, 480),
        "sea",
        [("ship", "USS Nimitz", 1), ("heli", "Tiger", 1)],
        "Sailors on the USS Nimitz watch a Tiger helicopter approach.",
        [],
    ),
    (
        (640, 480),
        "land",
        [("launcher", "MARS", 1)],
        "The MARS rocket launcher fires a salvo on the range at Munster.",
        [("Munster", "location")],
    ),
    (
        (400, 300),
        "air",
        [("transport", "A400M", 1)],
        "An A400M transport aircraft lands in Kiel with supplies for the UN mission.",
        [("Kiel", "location"), ("UN", "other")],
    ),
    (
        (500, 375),
        "land",
        [("howitzer", "Panzerhaubitze 2000", 2)],
        "Two Panzerhaubitze 2000 fire at targets during a NATO exercise in Lithuania.",
        [("NATO", "other"), ("Lithuania", "location")],
    ),
    ((320, 240), "land", [], "The soldier reloads his rifle and waits for the order.", []),
    (
        (640, 480),
        "sea",
        [("ship", "Sachsen", 1), ("sub", "U32", 1)],
        "Standing NATO Maritime Group 1 meets the Sachsen and the submarine U32 off Bergen, "
        "a first for NATO in the region.",
        [("Standing NATO Maritime Group 1", "other"), ("NATO", "other"), ("Bergen", "location")],
    ),
    (
        (480, 360),
        "land",
        [("tank", "Fennek", 1)],
        "A Fennek scout vehicle hides behind a hill; the crew carries a G36 rifle.",
        [("G36", "weapon")],
    ),
    (
        (400, 300),
        "air",
        [("heli", "Tiger", 2)],
        "Two Tiger attack helicopters of the Bundeswehr return from Afghanistan.",
        [("Bundeswehr", "other"), ("Afghanistan", "location")],
    ),
    ((640, 480), "sea", [("ship", None, 1)], "A ship leaves the harbour at sunrise.", []),
    (
        (500, 375),
        "air",
        [("jet", "Eurofighter", 1)],
        "The Eurofighter will replace the Tornado in the squadron.",
        [("Tornado", "aircraft")],
    ),
    (
        (360, 480),
        "land",
        [("tank", "Boxer", 1)],
        "Boxer vehicles of the Bundeswehr arrive in Lithuania for a NATO mission.",
        [("Bundeswehr", "other"), ("Lithuania", "location"), ("NATO", "other")],
    ),
    (
        (480, 360),
        "land",
        [("tank", "Leopard 2", 1)],
        "The Leopard 2 crosses the river; this Leopard 2 belongs to Panzerbataillon 203.",
        [("Panzerbataillon 203", "other")],
    ),
    (
        (320, 240),
        "sea",
        [("ship", "USS Nimitz", 1)],
        "USS Nimitz returns to port after six months at sea.",
        [],
    ),
    (
        (640, 480),
        "land",
        [("launcher", "PATRIOT", 1), ("launcher", "MARS", 1)],
        "A PATRIOT battery and a MARS launcher stand ready in Germany.",
        [("Germany", "location")],
    ),
    (
        (400, 300),
        "air",
        [("heli", "NH-90", 1), ("transport", "A400M", 1)],
        "An NH-90 escorts the A400M over the Baltic Sea.",
        [("Baltic Sea", "location")],
    ),
    (
        (500, 375),
        "land",
        [("tank", None, 1), ("launcher", None, 1)],
        "Tanks and trucks wait in a long column on the road.",
        [],
    ),
    (
        (480, 360),
        "sea",
        [("ship", "Sachsen", 1)],
        "The Sachsen escorts the USS Nimitz across the Mediterranean Sea.",
        [("USS Nimitz", "vessel"), ("Mediterranean Sea", "location")],
    ),
    (
        (640, 480),
        "air",
        [("jet", "Tornado", 1)],
        "A Tornado of Tactical Air Force Squadron 74 refuels over the North Sea.",
        [("Tactical Air Force Squadron 74", "other"), ("North Sea", "location")],
    ),
    (
        (400, 300),
        "land",
        [("tank", "PUMA", 2), ("tank", "Fennek", 1)],
        "Two PUMA vehicles and a Fennek patrol near Munster.",
        [("Munster", "location")],
    ),
]


# ---------------------------------------------------------------- drawing


def background(size: tuple[int, int], scene: str, rng: random.Random) -> tuple[Image.Image, int]:
    """The scene and the y of its horizon (where ground objects stand and ships float)."""
    w, h = size
    img = Image.new("RGB", size)
    d = ImageDraw.Draw(img)
    horizon = h if scene == "air" else int(h * rng.uniform(0.45, 0.55))
    for y in range(horizon):  # sky: a vertical gradient
        t = y / max(1, horizon)
        d.line([(0, y), (w, y)], fill=(int(110 + 80 * t), int(160 + 60 * t), 235))
    if scene == "land":
        d.rectangle([0, horizon, w, h], fill=(96, 128, 64))
        for _ in range(6):  # a few darker patches of grass
            x, y = rng.randrange(w), rng.randrange(horizon, h)
            d.ellipse([x - 30, y - 6, x + 30, y + 6], fill=(80, 112, 52))
    elif scene == "sea":
        d.rectangle([0, horizon, w, h], fill=(40, 80, 140))
        for _ in range(10):  # wave lines
            x, y = rng.randrange(w), rng.randrange(horizon + 4, h)
            d.line([(x, y), (x + 24, y)], fill=(90, 130, 190), width=2)
    for _ in range(rng.randint(1, 3)):  # clouds: never part of any entity
        x, y = rng.randrange(w), rng.randrange(max(1, horizon // 3))
        d.ellipse([x - 28, y - 10, x + 28, y + 10], fill=(245, 245, 250))
    return img, horizon


def draw_object(
    d: ImageDraw.ImageDraw, kind: str, x: float, y: float, s: float
) -> tuple[float, float, float]:
    """Draw one object with its top-left near (x, y) at scale s; returns where its name goes (cx, cy,
    width)."""
    W, H = UNIT[kind]
    w, h = W * s, H * s
    if kind in ("tank", "howitzer"):
        d.rounded_rectangle(
            [x, y + 0.62 * h, x + 0.86 * w, y + h], radius=0.18 * h, fill=(50, 50, 40)
        )  # tracks
        d.polygon(
            [
                (x, y + 0.64 * h),
                (x + 0.06 * w, y + 0.3 * h),
                (x + 0.8 * w, y + 0.3 * h),
                (x + 0.86 * w, y + 0.64 * h),
            ],
            fill=(92, 104, 60),
        )  # hull
        d.rectangle([x + 0.22 * w, y + 0.02 * h, x + 0.56 * w, y + 0.32 * h], fill=(80, 92, 52))  # turret
        d.rectangle([x + 0.56 * w, y + 0.1 * h, x + w, y + 0.18 * h], fill=(60, 66, 40))  # barrel
        return x + 0.43 * w, y + 0.47 * h, 0.7 * w
    if kind == "launcher":
        d.rectangle([x, y + 0.45 * h, x + 0.75 * w, y + 0.8 * h], fill=(104, 110, 70))  # truck bed
        d.rectangle([x + 0.75 * w, y + 0.5 * h, x + w, y + 0.8 * h], fill=(84, 90, 56))  # cab
        d.polygon(
            [
                (x + 0.05 * w, y + 0.45 * h),
                (x + 0.55 * w, y),
                (x + 0.7 * w, y + 0.12 * h),
                (x + 0.2 * w, y + 0.45 * h),
            ],
            fill=(150, 150, 130),
        )  # missile box
        for cx in (0.15, 0.45, 0.85):  # wheels
            d.ellipse([x + (cx - 0.08) * w, y + 0.7 * h, x + (cx + 0.08) * w, y + h], fill=(30, 30, 30))
        return x + 0.37 * w, y + 0.62 * h, 0.7 * w
    if kind in ("jet", "transport"):
        d.ellipse([x, y + 0.35 * h, x + w, y + 0.65 * h], fill=(170, 175, 185))  # fuselage
        d.polygon(
            [(x + 0.35 * w, y + 0.5 * h), (x + 0.6 * w, y + 0.5 * h), (x + 0.45 * w, y + h)],
            fill=(140, 145, 160),
        )  # wing
        d.polygon(
            [(x + 0.02 * w, y + 0.5 * h), (x + 0.12 * w, y + 0.5 * h), (x + 0.04 * w, y)],
            fill=(140, 145, 160),
        )  # tail fin
        return x + 0.55 * w, y + 0.5 * h, 0.7 * w
    if kind == "heli":
        d.line([(x, y), (x + w, y)], fill=(40, 40, 40), width=max(1, round(2 * s)))  # rotor
        d.rectangle([x + 0.48 * w, y, x + 0.52 * w, y + 0.25 * h], fill=(40, 40, 40))  # mast
        d.ellipse([x + 0.3 * w, y + 0.2 * h, x + 0.85 * w, y + 0.8 * h], fill=(90, 100, 80))  # cabin
        d.rectangle([x + 0.05 * w, y + 0.4 * h, x + 0.35 * w, y + 0.5 * h], fill=(90, 100, 80))  # tail boom
        d.line(
            [(x + 0.35 * w, y + h - 1), (x + 0.85 * w, y + h - 1)],
            fill=(40, 40, 40),
            width=max(1, round(2 * s)),
        )  # skid
        return x + 0.57 * w, y + 0.5 * h, 0.5 * w
    if kind == "ship":
        d.polygon(
            [(x, y + 0.55 * h), (x + w, y + 0.55 * h), (x + 0.9 * w, y + h), (x + 0.06 * w, y + h)],
            fill=(120, 124, 130),
        )  # hull
        d.rectangle([x + 0.55 * w, y + 0.22 * h, x + 0.75 * w, y + 0.55 * h], fill=(150, 154, 160))  # bridge
        d.rectangle([x + 0.64 * w, y, x + 0.66 * w, y + 0.22 * h], fill=(60, 60, 60))  # mast
        return x + 0.5 * w, y + 0.77 * h, 0.8 * w
    if kind == "sub":
        d.ellipse([x, y + 0.4 * h, x + w, y + h], fill=(50, 54, 60))  # hull
        d.rectangle([x + 0.4 * w, y, x + 0.55 * w, y + 0.5 * h], fill=(50, 54, 60))  # sail
        return x + 0.5 * w, y + 0.7 * h, 0.6 * w
    raise ValueError(f"unknown object kind {kind!r}")


def paint_name(d: ImageDraw.ImageDraw, name: str, cx: float, cy: float, width: float, dark: bool) -> None:
    """The name on the object's body: the largest font (up to 16 px) whose text fits `width`."""
    for size in range(16, 5, -1):
        font = ImageFont.load_default(size=size)
        if font.getlength(name) <= width:
            break
    d.text((cx, cy), name, fill=(20, 20, 30) if dark else (255, 255, 255), font=font, anchor="mm")


def render(
    size: tuple[int, int], scene: str, objects: list[tuple[str, str | None, int]], rng: random.Random
) -> tuple[Image.Image, list[tuple[str | None, str, list[int]]]]:
    """The picture and, per drawn object, (name, kind, [x1, y1, x2, y2]) of its exact pixel extent."""
    img, horizon = background(size, scene, rng)
    w, h = size
    flat = [(kind, name) for kind, name, copies in objects for _ in range(copies)]
    slot = w / max(1, len(flat))  # side by side, so no object hides another
    drawn = []
    for i, (kind, name) in enumerate(flat):
        uw, uh = UNIT[kind]
        s = min(slot * 0.85 / uw, (h * 0.45) / uh) * rng.uniform(0.8, 1.0)
        x = i * slot + rng.uniform(0.02, 1.0 - 0.02 - uw * s / slot) * slot
        if scene == "air" or kind in ("heli", "jet", "transport"):
            y = rng.uniform(0.08 * h, max(0.1 * h, min(horizon, h) * 0.6 - uh * s))
        elif kind in ("ship", "sub"):
            y = horizon - 0.65 * uh * s + rng.uniform(0, 0.25 * (h - horizon))  # floating below the horizon
        else:
            y = horizon - 0.2 * uh * s + rng.uniform(0, 0.5 * (h - horizon - uh * s))
        layer = Image.new("RGBA", size, (0, 0, 0, 0))
        ld = ImageDraw.Draw(layer)
        cx, cy, tw = draw_object(ld, kind, x, y, s)
        if name:
            paint_name(ld, name, cx, cy, tw, dark=kind in ("jet", "transport"))  # light bodies
        bbox = layer.getchannel("A").getbbox()  # the exact extent of the painted pixels
        assert bbox is not None, f"{kind} drew nothing"
        img.paste(layer, (0, 0), layer)
        drawn.append((name, kind, list(bbox)))
    return img, drawn


# ---------------------------------------------------------------- the dataset


def make(out: Path = OUT) -> dict:
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    texts, labels = {}, {}
    for i, (size, scene, objects, caption, hidden) in enumerate(SPECS, 1):
        sid = f"{i:03d}"
        rng = random.Random(SEED * 1000 + i)
        img, drawn = render(size, scene, objects, rng)
        img.save(out / "images" / f"{sid}.jpg", quality=JPEG_QUALITY, optimize=True)
        texts[sid] = {"text": caption}
        recs = []
        for name, kind, (x1, y1, x2, y2) in drawn:
            if name:
                recs.append(
                    {
                        "name": name,
                        "label": TYPE_OF[kind],
                        "bnd": {"xmin": x1, "ymin": y1, "xmax": x2, "ymax": y2},
                    }
                )
        recs += [{"name": name, "label": typ, "bnd": None} for name, typ in hidden]
        labels[sid] = recs
    (out / "text.json").write_text(json.dumps(texts, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "entity.json").write_text(
        json.dumps(labels, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "types.txt").write_text(TYPES_TXT, encoding="utf-8")
    data = read_ccks(out)  # the real reader must accept it, every name found
    assert data.missing_images == 0 and len(data.samples) == len(SPECS)
    return stats(data)


if __name__ == "__main__":
    summary = make()
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(json.dumps(summary, indent=1))
    print(f"wrote {OUT} ({size / 1024:.0f} KiB)")
