"""The linear-chain CRF of ReFineG's tagger, in plain PyTorch: training, decoding and marginals.

The tagger (tagger.py) puts it on top of its emission scores; its forward-backward marginals
P(tag_t = k | text) are what the Refinement Stage (uncertainty.py) turns into entity uncertainties.
Inputs: emissions (B, T, K) float and a (B, T) bool mask, True on tokens, padding at the end of each
row; gold tags (B, T) long for training. Outputs: log-likelihoods (B,), marginals (B, T, K), Viterbi
paths. The tag scheme's illegal moves (O -> I-X, B-X -> I-Y, ...) are forbidden everywhere.

    python -m pytest -q tests/method/test_crf.py      # against brute-force enumeration of every path

Left out on purpose: k-best decoding, higher-order CRFs, a CUDA kernel (T is at most a few hundred).
"""

import torch
from torch import nn

# score of a forbidden move: exp(NEG) underflows to 0, and unlike -inf it never makes NaN gradients
NEG = -10000.0


def tag_names(types: list[str], scheme: str) -> list[str]:
    """The tag set, in marginal-column order: O, then B/I(/E/S) per type."""
    if scheme not in ("BIO", "BIOES"):
        raise ValueError(f"expected scheme BIO or BIOES, got {scheme!r}")
    return ["O"] + [f"{p}-{t}" for t in types for p in ("BI" if scheme == "BIO" else "BIES")]


def allowed_moves(tags: list[str], scheme: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boolean (K,) start, (K, K) transition [from, to] and (K,) end masks of the legal tag sequences."""
    split = [("O", "") if t == "O" else (t[0], t[2:]) for t in tags]
    start = torch.tensor([p not in "IE" for p, _ in split])  # an entity cannot begin inside
    # BIOES: no open entity at the end
    end = torch.tensor([scheme == "BIO" or p not in "BI" for p, _ in split])
    trans = torch.ones(len(tags), len(tags), dtype=torch.bool)
    for i, (pi, yi) in enumerate(split):
        for j, (pj, yj) in enumerate(split):
            if scheme == "BIO":  # I-X only continues B-X or I-X
                trans[i, j] = pj != "I" or (pi in "BI" and yi == yj)
            else:  # an open B-X/I-X must go on with I-X/E-X; nothing else may
                trans[i, j] = (pi in "BI" and pj in "IE" and yi == yj) or (pi not in "BI" and pj not in "IE")
    return start, trans, end


class CRF(nn.Module):
    """Linear-chain CRF, batch-first; masks (B, T) bool, True on tokens, padding at the end of each row.

    Scores follow pytorch-crf: start[k] + sum_t emission[t, tag_t] + sum_t trans[tag_t-1, tag_t] + end[tag_T].
    Forbidden moves carry NEG on top of the learnt scores, so no probability goes to illegal paths.
    """

    def __init__(
        self,
        num_tags: int,
        start_ok: torch.Tensor | None = None,
        trans_ok: torch.Tensor | None = None,
        end_ok: torch.Tensor | None = None,
    ):
        super().__init__()
        k = self.num_tags = num_tags
        self.start = nn.Parameter(torch.zeros(k))
        self.trans = nn.Parameter(torch.zeros(k, k))
        self.end = nn.Parameter(torch.zeros(k))
        shapes = {"start_pen": (k,), "trans_pen": (k, k), "end_pen": (k,)}
        for (name, shape), ok in zip(shapes.items(), (start_ok, trans_ok, end_ok)):
            allowed = torch.ones(shape, dtype=torch.bool) if ok is None else ok  # None: every move is legal
            self.register_buffer(name, torch.where(allowed, 0.0, NEG), persistent=False)

    def _validate(self, em: torch.Tensor, mask: torch.Tensor, tags: torch.Tensor | None = None) -> None:
        """The public entry points' inputs, checked as pytorch-crf does: a wrong shape or a mask with holes
        would otherwise give silently wrong scores, not an error."""
        if em.dim() != 3 or em.shape[2] != self.num_tags:
            raise ValueError(f"emissions: expected shape (B, T, {self.num_tags}), got {tuple(em.shape)}")
        if not em.is_floating_point():
            raise ValueError(f"emissions: expected a float tensor, got {em.dtype}")
        if mask.shape != em.shape[:2]:
            raise ValueError(
                f"mask: expected shape {tuple(em.shape[:2])} (the emissions' B, T), got {tuple(mask.shape)}"
            )
        if mask.dtype != torch.bool:
            raise ValueError(f"mask: expected a bool tensor, got {mask.dtype}")
        if mask.shape[1] and not mask[:, 0].all():
            raise ValueError(
                "mask: expected every row to start with a token (mask[:, 0] all True), "
                f"got empty row(s) {(~mask[:, 0]).nonzero().flatten().tolist()[:5]}"
            )
        holes = mask[:, 1:] & ~mask[:, :-1]  # (B, T-1): a token right after padding
        if holes.any():
            raise ValueError(
                "mask: expected the padding at the end of each row (True then False), got a True "
                f"after a False in row(s) {holes.any(1).nonzero().flatten().tolist()[:5]}"
            )
        if tags is not None:
            if tags.shape != em.shape[:2]:
                raise ValueError(
                    f"tags: expected shape {tuple(em.shape[:2])} (the emissions' B, T), got "
                    f"{tuple(tags.shape)}"
                )
            if tags.dtype != torch.long:
                raise ValueError(f"tags: expected a long tensor, got {tags.dtype}")
            if ((tags < 0) | (tags >= self.num_tags)).any():
                raise ValueError(
                    f"tags: expected tag indices in [0, {self.num_tags}), got "
                    f"{int(tags.min())}..{int(tags.max())}"
                )

    def scores(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.start + self.start_pen, self.trans + self.trans_pen, self.end + self.end_pen

    def _alphas(self, em: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Forward log-scores alpha[b, t, k] of all prefixes ending in tag k at t; frozen after a row ends."""
        start, trans, _ = self.scores()
        alpha = start + em[:, 0]  # (B, K)
        out = [alpha]
        for t in range(1, em.shape[1]):
            step = alpha[:, :, None] + trans + em[:, t, None, :]  # (B, K_from, K_to)
            alpha = torch.where(mask[:, t, None], torch.logsumexp(step, dim=1), alpha)
            out.append(alpha)
        return torch.stack(out, dim=1)  # (B, T, K)

    def log_likelihood(self, em: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log P(tags | x) per row, (B,). em (B, T, K) float, tags (B, T) long, mask (B, T) bool."""
        self._validate(em, mask, tags)
        start, trans, end = self.scores()
        m = mask.to(em.dtype)
        gold = em.gather(2, tags[:, :, None]).squeeze(2) * m  # (B, T)
        moves = trans[tags[:, :-1], tags[:, 1:]] * m[:, 1:]  # (B, T-1)
        last = tags.gather(1, (mask.sum(1) - 1)[:, None]).squeeze(1)  # (B,)
        score = start[tags[:, 0]] + gold.sum(1) + moves.sum(1) + end[last]
        log_z = torch.logsumexp(self._alphas(em, mask)[:, -1] + end, dim=1)
        return score - log_z

    def marginals(self, em: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """P(tag_t = k | x) by forward-backward, (B, T, K); rows of padding are 0."""
        self._validate(em, mask)
        _, trans, end = self.scores()
        alphas = self._alphas(em, mask)
        log_z = torch.logsumexp(alphas[:, -1] + end, dim=1)  # (B,)
        beta = end.expand(em.shape[0], -1)  # (B, K): log-scores of all suffixes after t
        betas = [beta]
        for t in range(em.shape[1] - 2, -1, -1):
            step = trans + (em[:, t + 1] + beta)[:, None, :]  # (B, K_from, K_to)
            # where t + 1 is padding, t is the row's last token: only the end score follows it
            beta = torch.where(mask[:, t + 1, None], torch.logsumexp(step, dim=2), end)
            betas.append(beta)
        betas = torch.stack(betas[::-1], dim=1)  # (B, T, K)
        return torch.exp(alphas + betas - log_z[:, None, None]) * mask[:, :, None]

    def viterbi(self, em: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """The best tag path of each row, cut to its length."""
        self._validate(em, mask)
        start, trans, end = self.scores()
        k = em.shape[2]
        score = start + em[:, 0]  # (B, K)
        history = []
        for t in range(1, em.shape[1]):
            best, arg = (score[:, :, None] + trans).max(dim=1)  # (B, K_to): best predecessor of each tag
            on = mask[:, t, None]
            score = torch.where(on, best + em[:, t], score)
            history.append(torch.where(on, arg, torch.arange(k, device=em.device)))  # padding: keep the tag
        tag = (score + end).argmax(dim=1)  # (B,)
        path = [tag]
        for arg in reversed(history):
            tag = arg.gather(1, tag[:, None]).squeeze(1)
            path.append(tag)
        path = torch.stack(path[::-1], dim=1).tolist()  # (B, T)
        return [p[:n] for p, n in zip(path, mask.sum(1).tolist())]
