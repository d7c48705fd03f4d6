"""What the run directory stores of the method: a trained tagger, in a folder that rebuilds it alone.

`save` writes config.json (the tagger's settings, types, tags and the encoder's architecture), weights.pt,
the tokenizer files, and trained_on.json: which samples it learnt from (ids, and text digests that
data.py-style readers match), so that a reuse with --tagger never scores it on them (`trained_on`, read by
inputs.py). `load` rebuilds the tagger from those files alone (no download, no training arguments).

    python refineg.py --data examples/demo --out runs/demo     # writes runs/demo/tagger/
    python refineg.py --data examples/demo --tagger runs/demo/tagger --out runs/again    # loads it

Left out on purpose: loading a tagger saved with a setting this tagger.py does not know (refused, named).
"""

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

import tagger
from data import DataError, Sample, without_spaces
from tagger import Tagger, TaggerConfig

# settings that became constants: a saved tagger naming one loads when it has the constant's value
RETIRED = {
    "weight_decay": tagger.WEIGHT_DECAY,
    "warmup": tagger.WARMUP,
    "max_grad_norm": tagger.MAX_GRAD_NORM,
    "shape_dim": tagger.SHAPE_DIM,
}


def save(model: Tagger, directory: str, trained_on: list[Sample] | None = None) -> None:
    """config.json (settings, types, tags, the encoder's architecture), weights.pt, the tokenizer files,
    and trained_on.json: which samples it learnt from (ids, and text digests that data.py-style
    readers match), so that a reuse with --tagger never scores it on them."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if trained_on is not None:
        seen = {"samples": len(trained_on), "ids": [s.id for s in trained_on]}
        seen["text_digests"] = sorted({text_digest(s) for s in trained_on})
        (d / "trained_on.json").write_text(json.dumps(seen, ensure_ascii=False), encoding="utf-8")
    meta = {
        "tagger": asdict(model.config),
        "types": model.types,
        "tags": model.tags,
        "encoder": model.encoder.config.to_dict(),
    }
    (d / "config.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    torch.save(model.state_dict(), d / "weights.pt")  # as it is: int8 layers need its version metadata
    model.tokenizer.save_pretrained(str(d))


def text_digest(sample: Sample) -> str:
    """A short digest of a sample's text without whitespace: the same sentence whatever its id or layout."""
    return hashlib.sha1(without_spaces(sample.text).encode()).hexdigest()[:16]


def trained_on(directory: str) -> set[str]:
    """The text digests of the samples a saved tagger learnt from (none known for an older tagger)."""
    path = Path(directory) / "trained_on.json"
    if not path.is_file():
        return set()
    try:
        return set(json.loads(path.read_text(encoding="utf-8"))["text_digests"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{path}: expected the trained_on.json written by app.store.save ({err})") from None


def load(directory: str, device: str | None = None) -> Tagger:
    """Rebuild a saved tagger from its own files (no download, no training arguments)."""
    d = Path(directory)
    if not (d / "config.json").is_file() or not (d / "weights.pt").is_file():
        raise FileNotFoundError(f"{d}: expected config.json and weights.pt written by app.store.save")
    meta = json.loads((d / "config.json").read_text(encoding="utf-8"))
    # a setting this tagger.py does not know may change the model: refuse it (a missing one takes its default;
    # one that became a constant is dropped when it has the constant's value)
    saved = {k: v for k, v in meta["tagger"].items() if RETIRED.get(k, object()) != v}
    unknown = sorted(set(saved) - {f.name for f in fields(TaggerConfig)})
    if unknown:
        raise ValueError(
            f"{d}/config.json: unknown tagger settings {unknown}; expected a tagger saved by this "
            "version of tagger.py"
        )
    config = TaggerConfig(**{**saved, **({"device": device} if device else {})})
    encoder = AutoModel.from_config(AutoConfig.for_model(**meta["encoder"]))
    model = Tagger(config, meta["types"], encoder, AutoTokenizer.from_pretrained(str(d)))
    if model.tags != meta["tags"]:
        raise ValueError(f"{d}/config.json: tags {meta['tags']} do not match the types and scheme")
    if config.int8:  # saved int8: the same int8 layers must exist before their weights can load
        tagger.quantize(model)
    model.load_state_dict(torch.load(d / "weights.pt", map_location="cpu", weights_only=True))
    return model.to(config.device).eval()
