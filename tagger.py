"""The small tagger of ReFineG's Training Stage (part 2): a pretrained encoder, word shapes and a CRF.

It is trained on the labelled seeds plus the synthetic sentences (synth.py); its CRF marginals
P(tag_t = k | text) feed the Refinement Stage (uncertainty.py). Any Hugging Face encoder embeds each word
by its first sub-token (windows and word shapes: encoding.py); embeddings of the word's shape and its
neighbours' (capitalised, ALL CAPS, digits, ...) are concatenated, since the default encoder is uncased.
A linear layer gives emission scores; a linear-chain CRF (crf.py) adds transition scores in which the
scheme's illegal moves (O -> I-X, B-X -> I-Y, ...) are forbidden, in training, decoding and marginals.

Inputs: `Sample`s with tokens and gold entities (data.py) and the type list. Output: a `Tagger`;
`predict` returns new `Sample`s with the Viterbi entities and `.marginals`, a (T, K) array in
`tagger.tags` order. (app/store.py saves a trained one into a folder and loads it back.)

    python -m bench tagger        # trains it on CCKS and Twitter-GMNER, side by side with a softmax peer

Left out on purpose: character CNNs / BiLSTMs on top of the encoder, nested entities, mixed precision,
multi-GPU training.
"""

from __future__ import annotations  # the model and its training come first, its settings after them

import copy
import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from crf import CRF, allowed_moves, tag_names
from data import Entity, Sample, require_valid, setting, spans_to_tags, tags_to_spans
from encoding import SHAPES, Encoded, collate, encode, length_batches, load_encoder

# ---------------------------------------------------------------- the model


class Tagger(nn.Module):
    def __init__(self, config: TaggerConfig, types: list[str], encoder: nn.Module, tokenizer):
        super().__init__()
        self.config = config
        self.types = list(types)
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out anyway
        self.tags = tag_names(self.types, config.scheme)
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        if config.shape_features:
            self.shape = nn.Embedding(len(SHAPES), SHAPE_DIM, padding_idx=0)
            hidden += 3 * SHAPE_DIM
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(hidden, len(self.tags))
        self.crf = CRF(len(self.tags), *allowed_moves(self.tags, config.scheme))

    def emissions(self, batch: dict) -> torch.Tensor:
        """(B, T, K) emission scores of a batch from `collate`."""
        # (W, L, H): the batch's W windows of L sub-tokens
        hid = self.encoder(input_ids=batch["ids"], attention_mask=batch["attn"]).last_hidden_state
        x = hid.reshape(-1, hid.shape[-1])[batch["index"]]  # (B, T, H): first piece of every word
        if self.config.shape_features:
            s = self.shape(batch["shapes"])  # (B, T, D)
            pad = torch.zeros_like(s[:, :1])
            x = torch.cat([x, torch.cat([pad, s[:, :-1]], 1), s, torch.cat([s[:, 1:], pad], 1)], dim=-1)
        return self.head(self.dropout(x))


# ---------------------------------------------------------------- training


def train_tagger(
    train: list[Sample],
    types: list[str],
    config: TaggerConfig | None = None,
    dev: list[Sample] | None = None,
    init: Tagger | None = None,
) -> tuple[Tagger, list[dict]]:
    """Fine-tune encoder + head + CRF on `train`; with `dev`, keep the epoch of best dev span F1, else
    the last. Returns the tagger and its history: one row per epoch (epoch, mean loss, sentences, dev_f1
    with `dev`). `init`: start from this (float) tagger's weights, not the pretrained encoder."""
    config = config or TaggerConfig()
    check_samples(train + (dev or []), types)
    if dev and len({s.id for s in dev}) != len(dev):
        raise ValueError("expected distinct sample ids in the dev set (the scorer pairs samples by id)")
    train = [piece for s in train if s.tokens for piece in chunks(s, config.train_chunk)]
    if not train:
        raise ValueError("expected at least one training sample with tokens, got none")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = build(config, types, init)
    history = fit(model, train, dev)
    if config.int8:
        quantize(model)
    model.eval()
    return model, history


def fit(model: Tagger, train: list[Sample], dev: list[Sample] | None) -> list[dict]:
    """The training loop: `config.epochs` epochs (more when that is under `config.min_steps` steps) of
    length-bucketed batches; with `dev`, the weights of the epoch with the best dev span F1 are restored
    at the end (strict: on ties the earlier epoch stays)."""
    config = model.config
    rng = np.random.default_rng(config.seed)
    enc = encode(model.tokenizer, [s.tokens for s in train], config.max_length)
    index = {t: k for k, t in enumerate(model.tags)}
    gold = [[index[t] for t in spans_to_tags(len(s.tokens), s.entities, config.scheme)] for s in train]
    per_epoch = min(config.epoch_size or len(train), len(train))
    steps = math.ceil(per_epoch / config.batch_size)
    epochs = epochs_to_run(config, steps)
    opt, sched = optimizer(model, config, epochs * steps)
    # disable=None: no bar when stderr is not a terminal (a log file), as for llm.py's bars
    bar = tqdm(total=epochs * steps, desc="tagger", disable=None if config.progress else True, leave=False)
    history = []
    best_f1 = -1.0
    best_state = None
    for epoch in range(1, epochs + 1):
        pick = list(range(len(train)))
        if per_epoch < len(train):
            pick = rng.permutation(len(train))[:per_epoch].tolist()
        loss = train_epoch(model, [enc[i] for i in pick], [gold[i] for i in pick], opt, sched, rng, bar)
        row = {"epoch": epoch, "loss": loss, "sentences": per_epoch}
        if dev:
            row["dev_f1"] = span_f1(dev, predict(model, dev))
            if row["dev_f1"] > best_f1:
                best_f1, best_state = row["dev_f1"], copy.deepcopy(model.state_dict())
        history.append(row)
        shown = {k: f"{v:.3f}" for k, v in row.items() if k in ("loss", "dev_f1")}
        bar.set_postfix({"epoch": f"{epoch}/{epochs}", **shown})
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


def epochs_to_run(config: TaggerConfig, steps: int) -> int:
    """`config.epochs`, or more when they make fewer than `config.min_steps` steps (the demo's 22
    sentences in batches of 16 are 2 steps an epoch: 60 steps take 30 epochs, not 10)."""
    return max(config.epochs, math.ceil(config.min_steps / steps))


def train_epoch(model: Tagger, enc: list[Encoded], gold: list[list[int]], opt, sched, rng, bar) -> float:
    """One pass over these sentences in batches of similar length; the mean loss."""
    config = model.config
    model.train()
    losses = []
    for rows in length_batches([e.size for e in enc], config.batch_size, rng):
        batch = collate([enc[i] for i in rows], model.pad_id, config.device, [gold[i] for i in rows])
        loss = -model.crf.log_likelihood(model.emissions(batch), batch["tags"], batch["mask"]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.update()
    return float(np.mean(losses))


def span_f1(gold: list[Sample], pred: list[Sample]) -> float:
    """MNER micro F1 of exact (span, type) matches: the dev score that picks the best epoch.

    A tag sequence holds each span once, so the set overlap is the one-to-one matching eval.py
    computes for any predictions (tests/method/test_eval.py checks the two agree).
    """

    def items(samples: list[Sample]) -> set:
        return {(s.id, e.start, e.end, e.type) for s in samples for e in s.entities}

    g = items(gold)
    p = items(pred)
    return 2 * len(g & p) / (len(g) + len(p)) if g or p else 0.0


# One int8 scale per output row, not one per matrix: per-channel scales keep more F1 at the same speed
INT8 = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}


def check_samples(samples: list[Sample], types: list[str]) -> None:
    if not types or len(set(types)) != len(types):
        raise ValueError(f"expected a non-empty list of distinct types, got {types}")
    for s in samples:
        for e in s.entities:
            if e.type not in types:
                raise ValueError(f"sample {s.id!r}: entity type {e.type!r} is not in {types}")
            if not 0 <= e.start < e.end <= len(s.tokens):
                raise ValueError(
                    f"sample {s.id!r}: span [{e.start}, {e.end}) outside its {len(s.tokens)} tokens"
                )


def chunks(sample: Sample, size: int) -> list[Sample]:
    """The sample cut into pieces of at most `size` words, never inside an entity (a piece grows to the end
    of an entity longer than `size`). Prediction needs no cut: without gradients its memory is linear."""
    inside = np.zeros(len(sample.tokens) + 1, dtype=bool)  # inside[b]: a cut before word b splits an entity
    for e in sample.entities:
        inside[e.start + 1 : e.end] = True
    out = []
    a = 0
    while a < len(sample.tokens):
        b = min(a + size, len(sample.tokens))
        while inside[b] and b > a + 1:
            b -= 1
        while inside[b]:  # an entity longer than `size`: keep it whole
            b += 1
        ents = [replace(e, start=e.start - a, end=e.end - a) for e in sample.entities if a <= e.start < b]
        whole = a == 0 and b == len(sample.tokens)
        out.append(Sample(sample.id if whole else f"{sample.id}#{a}", sample.tokens[a:b], sample.image, ents))
        a = b
    return out


def build(config: TaggerConfig, types: list[str], init: Tagger | None = None) -> Tagger:
    """A tagger ready to train: the pretrained encoder and a fresh head, or `init`'s weights."""
    tokenizer, encoder = load_encoder(config.encoder, config.progress)
    if config.max_length > tokenizer.model_max_length:
        raise ValueError(
            f"max_length {config.max_length} exceeds the encoder's limit {tokenizer.model_max_length}"
        )
    model = Tagger(config, types, encoder, tokenizer).to(config.device)
    if init is not None:
        if init.tags != model.tags or init.config.int8:
            kind = "an int8" if init.config.int8 else "a"
            raise ValueError(
                f"init: expected a float tagger with tags {model.tags}, got {kind} tagger "
                f"with tags {init.tags}"
            )
        model.load_state_dict(init.state_dict())
    if config.freeze_embeddings:
        encoder.get_input_embeddings().weight.requires_grad_(False)
    return model


def optimizer(model: Tagger, config: TaggerConfig, steps: int):
    """AdamW with one learning rate per part, and BERT's schedule: lr x step / warm-up steps (so the first
    step has lr 0), then linear decay to 0 at the last step (the peer in bench/tagger.py uses the same)."""
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    head = [p for n, p in model.named_parameters() if not n.startswith(("encoder.", "crf."))]
    opt = torch.optim.AdamW(
        [
            {"params": encoder, "lr": config.lr_encoder, "weight_decay": WEIGHT_DECAY},
            {"params": head, "lr": config.lr_head, "weight_decay": WEIGHT_DECAY},
            {"params": list(model.crf.parameters()), "lr": config.lr_crf, "weight_decay": 0.0},
        ]
    )
    return opt, get_linear_schedule_with_warmup(opt, int(WARMUP * steps), steps)


def quantize(model: Tagger) -> None:
    """Replace the encoder's nn.Linear layers by int8 ones (weights int8, activations quantized per batch).

    The linear layers hold ~all of a transformer's arithmetic; embeddings, layer norms, the
    shape features, the emission layer and the CRF stay float. Prediction only: int8 layers
    have no gradients. app/store.py saves the int8 weights as they are and rebuilds them on load.
    """
    if torch.device(model.config.device).type != "cpu":
        raise ValueError(f"int8 dynamic quantization runs on CPU only, got device {model.config.device!r}")
    with warnings.catch_warnings():  # torch points to torchao for the same thing; this API still works
        warnings.simplefilter("ignore")
        model.encoder = torch.ao.quantization.quantize_dynamic(model.encoder, INT8, dtype=torch.qint8)


# ---------------------------------------------------------------- settings

# Fixed choices, BERT's fine-tuning recipe, and the size of the word-shape features
WEIGHT_DECAY = 0.01  # AdamW weight decay of encoder and head (none on the CRF)
WARMUP = 0.1  # share of all steps with linearly rising lr, then linear decay to 0
MAX_GRAD_NORM = 1.0  # gradient clipping (global L2 norm)
SHAPE_DIM = 16  # size of one word-shape embedding


@dataclass
class TaggerConfig:
    encoder: str = setting("", 'HF name or local path; "" = the offline all-MiniLM-L6-v2 package', main=True)
    scheme: str = setting("BIOES", "BIO | BIOES; BIOES makes the CRF model entity ends explicitly")
    max_length: int = setting(
        128, "sub-tokens per encoder window incl. special tokens; longer texts are windowed"
    )
    lr_encoder: float = setting(5e-5, "AdamW lr of the pretrained encoder (small: it is already trained)")
    lr_head: float = setting(1e-3, "lr of the shape embeddings and the emission layer (trained from scratch)")
    lr_crf: float = setting(1e-2, "lr of the transition scores (few parameters that need to move far)")
    epochs: int = setting(10, "passes over the training data (or over epoch_size sentences)", main=True)
    min_steps: int = setting(60, "optimisation steps at least: small data gets more epochs than `epochs`")
    epoch_size: int = setting(
        2000, "sentences drawn afresh each epoch when there are more (bounds time); 0 = all"
    )
    batch_size: int = setting(16, "sentences per step")
    train_chunk: int = setting(
        64, "words: longer training texts are cut between entities (bounds a batch's memory)"
    )
    dropout: float = setting(0.1, "before the emission layer (the encoder keeps its own dropout)")
    shape_features: bool = setting(True, "word-shape embeddings of the word and its two neighbours")
    freeze_embeddings: bool = setting(
        True, "keep the word-piece embeddings fixed: unseen words keep their place"
    )
    seed: int = setting(0, "batches, dropout and head initialisation")
    device: str = setting("cpu", "torch device to train and predict on (cpu, cuda, cuda:1, ...)", main=True)
    threads: int = setting(0, "torch.set_num_threads; 0 = leave torch's default")
    int8: bool = setting(
        False, "the encoder's linear layers in int8 (CPU): faster prediction, a little less F1"
    )
    progress: bool = setting(
        True, "progress bars while loading the encoder and training (only on a terminal)"
    )
    self_train_rounds: int = setting(
        2, "pseudo-label + retrain rounds on --unlabelled text (selftrain.py)", main=True
    )
    self_train_epochs: int = setting(3, "epochs of each round, continuing from the previous round's tagger")
    self_train_tau: float = setting(
        0.1, "keep a pseudo-labelled sentence when each entity's uncertainty is <= this"
    )
    self_train_missed: float = setting(
        0.1, "and its missed-entity score (max 1 - P(O) off entities) is <= this"
    )

    def __post_init__(self):
        require_valid(
            self,
            [
                ("scheme", self.scheme in ("BIO", "BIOES"), "BIO or BIOES"),
                ("max_length", self.max_length >= 8, "at least 8 sub-tokens"),
                ("epochs", self.epochs >= 1, "at least 1"),
                ("min_steps", self.min_steps >= 0, "0 or more"),
                ("epoch_size", self.epoch_size >= 0, "0 (all) or more"),
                ("batch_size", self.batch_size >= 1, "at least 1"),
                ("train_chunk", self.train_chunk >= 1, "a positive number of words"),
                ("dropout", 0 <= self.dropout < 1, "a probability in [0, 1)"),
                ("device", device_problem(self.device) == "", device_problem(self.device)),
                ("int8", not self.int8 or self.device.split(":")[0] == "cpu", "int8 only on the cpu device"),
                ("threads", self.threads >= 0, "0 (torch's default) or more"),
                ("self_train_rounds", self.self_train_rounds >= 0, "0 or more"),
                ("self_train_epochs", self.self_train_epochs >= 1, "at least 1"),
                ("self_train_tau", 0 <= self.self_train_tau <= 1, "an uncertainty in [0, 1]"),
                ("self_train_missed", 0 <= self.self_train_missed <= 1, "a score in [0, 1]"),
            ],
        )


def device_problem(device: str) -> str:
    """ "" when torch can use `device` here, else what this machine offers instead."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        return "a torch device such as cpu, cuda or cuda:1"
    if kind == "cuda" and not torch.cuda.is_available():
        return (
            "a device this machine has: cpu (this torch has no usable CUDA; a CUDA build of torch uses GPUs)"
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        return "a device this machine has: cpu (MPS is not available here)"
    return ""


# ---------------------------------------------------------------- prediction


def predict(model: Tagger, samples: list[Sample], batch_size: int = 64, mc_passes: int = 0) -> list[Sample]:
    """New samples with the Viterbi entities (source "tagger") and (T, K) marginals in `model.tags` order.

    mc_passes > 0: the marginals are the mean over that many passes with dropout on (Monte-Carlo
    dropout, seeded by config.seed); the entities still come from the deterministic pass.
    """
    if mc_passes < 0:
        raise ValueError(f"expected mc_passes >= 0, got {mc_passes}")
    enc = encode(model.tokenizer, [s.tokens for s in samples], model.config.max_length)
    paths: list[list[int]] = [[] for _ in samples]
    margs = [np.zeros((len(s.tokens), len(model.tags)), dtype=np.float32) for s in samples]
    was_training = model.training
    todo = [i for i, s in enumerate(samples) if s.tokens]
    with torch.inference_mode(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(model.config.seed)
        for b in length_batches([enc[i].size for i in todo], batch_size):
            rows = [todo[i] for i in b]
            batch = collate([enc[i] for i in rows], model.pad_id, model.config.device)
            best, p = decode(model, batch, mc_passes)
            for j, i in enumerate(rows):
                paths[i] = best[j]
                margs[i] = p[j, : len(samples[i].tokens)]
    model.train(was_training)
    out = []
    for s, path, m in zip(samples, paths, margs):
        spans = tags_to_spans([model.tags[x] for x in path])
        ents = [Entity(a, e, t, boxes=[], source="tagger") for a, e, t in spans]
        out.append(Sample(s.id, list(s.tokens), s.image, ents, marginals=m))
    return out


def decode(model: Tagger, batch: dict, mc_passes: int) -> tuple[list[list[int]], np.ndarray]:
    """Viterbi paths and (B, T, K) marginals of one batch; with mc_passes, marginals averaged over dropout."""
    model.eval()
    em = model.emissions(batch).double()  # float64 forward-backward: rows sum to 1 within 1e-9
    best = model.crf.viterbi(em, batch["mask"])
    p = model.crf.marginals(em, batch["mask"])
    if mc_passes:
        model.train()
        passes = [
            model.crf.marginals(model.emissions(batch).double(), batch["mask"]) for _ in range(mc_passes)
        ]
        p = sum(passes) / mc_passes
    return best, p.float().cpu().numpy()
