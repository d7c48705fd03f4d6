"""How unsure the tagger is: entity uncertainty from CRF marginals, the threshold tau, and routing.

The first half of ReFineG's Refinement Stage. From the tagger's CRF marginals P(tag_t = k | text) every
predicted entity gets an uncertainty in [0, 1] (higher = less sure); those above a threshold tau are
marked once (`route`) and go to the MLLM (refinement.py); self-training (selftrain.py) learns only from
sentences whose entities are all sure.

Inputs: predicted Samples (Viterbi entities, `.marginals` (T, K) in `tags` order). Outputs: each entity's
`uncertainty` and `delegated` (set in place), and the threshold.

    python -m bench uncertainty     # AUROC and risk-coverage of the uncertainty, CCKS + Twitter-GMNER

Left out on purpose: calibration (routing needs only the ranking of the marginals), and pairwise CRF
marginals (the exact probability of a whole span): token marginals already rank entities well.
"""

from dataclasses import dataclass

import numpy as np

from data import Entity, Sample, require_valid, setting, spans_to_tags

METHODS = ("marginal", "mc_dropout")


@dataclass
class UncertaintyConfig:
    method: str = setting("marginal", "marginal (CRF, one pass) | mc_dropout (mc_passes x slower)")
    tau: float | None = setting(
        None, "delegate entities with uncertainty > tau; None = pick it by target_rate", main=True
    )
    target_rate: float | None = setting(
        0.2, "with tau None: share of entities to delegate (a call budget)", main=True
    )
    mc_passes: int = setting(10, "dropout passes T for mc_dropout")

    def __post_init__(self):
        rate_ok = self.target_rate is not None and 0 <= self.target_rate <= 1 or self.tau is not None
        passes_ok = self.method != "mc_dropout" or self.mc_passes >= 1
        require_valid(
            self,
            [
                ("method", self.method in METHODS, " or ".join(METHODS)),
                ("tau", self.tau is None or self.tau >= 0, "none or an uncertainty >= 0"),
                ("target_rate", rate_ok, "a share in [0, 1] (none only together with a fixed `tau`)"),
                ("mc_passes", passes_ok, "at least 1 with mc_dropout"),
            ],
        )


# ---------------------------------------------------------------- uncertainty from the marginals


def entity_uncertainty(marginals: np.ndarray, tags: list[str], e: Entity) -> tuple[float, float]:
    """(span uncertainty, type uncertainty) of one predicted entity from token marginals (T, K).

    Span: 1 - the mean, over the span's tokens, of the probability of the predicted ROLE
    (B/I/E/S summed over types), plus one position after the span whose predicted role is
    "does not continue" (in BIO a too-short entity is invisible inside its own span).
    Type: 1 - the mean over the span's tokens of the probability mass of the predicted type."""
    scheme = scheme_of(tags)
    n = e.end - e.start
    predicted = spans_to_tags(n, [Entity(0, n, e.type)], scheme)
    role = np.array([t[0] for t in tags])  # (K,) B I E S O
    typ = np.array([t[2:] for t in tags])  # (K,) type, "" for O
    p_role = [marginals[e.start + i, role == r[0]].sum() for i, r in enumerate(predicted)]
    if e.end < len(marginals):
        p_role.append(1.0 - marginals[e.end, (role == "I") | (role == "E")].sum())
    u_span = 1.0 - float(np.mean(p_role))
    u_type = 1.0 - float(marginals[e.start : e.end, typ == e.type].sum(axis=1).mean())
    return min(max(u_span, 0.0), 1.0), min(max(u_type, 0.0), 1.0)


def scheme_of(tags: list[str]) -> str:
    """The tag scheme a tagger's tag names belong to."""
    return "BIOES" if any(t[:2] in ("E-", "S-") for t in tags) else "BIO"


def span_entropy(marginals: np.ndarray, e: Entity) -> float:
    """Mean over the span's tokens of the normalised entropy H(p_t) / log K (UnCo's MC-dropout measure)."""
    p = np.clip(marginals[e.start : e.end], 1e-12, 1.0)  # (L, K)
    h = -(p * np.log(p)).sum(axis=1) / np.log(p.shape[1])  # (L,)
    return float(np.clip(h.mean(), 0.0, 1.0))


def estimate(samples: list[Sample], tags: list[str], config: UncertaintyConfig | None = None) -> None:
    """Set every predicted entity's `uncertainty` in [0, 1] from `sample.marginals`, by `config.method`.
    marginal: max(span, type uncertainty), the two corrections the MLLM can make; an entity is wrong when
    its span OR its type is wrong, and the max flags either doubt at full strength where a mean would let
    a sure span hide an unsure type. mc_dropout: the normalised entropy over the span of marginals averaged
    over T dropout passes (the caller ran tagger.predict(..., mc_passes=T))."""
    config = config or UncertaintyConfig()
    for s in samples:
        if not s.entities:
            continue
        want = (len(s.tokens), len(tags))
        if s.marginals is None or s.marginals.shape != want:
            got = None if s.marginals is None else s.marginals.shape
            raise ValueError(f"sample {s.id}: expected marginals of shape {want}, got {got}")
        for e in s.entities:
            if config.method == "marginal":
                e.uncertainty = max(entity_uncertainty(s.marginals, tags, e))
            else:
                e.uncertainty = span_entropy(s.marginals, e)


def missed_entity_score(sample: Sample, tags: list[str]) -> float:
    """max over tokens outside every entity of 1 - P(O) (0 if none): how likely the tagger missed one."""
    outside = np.ones(len(sample.tokens), dtype=bool)
    for e in sample.entities:
        outside[e.start : e.end] = False
    if sample.marginals is None or not outside.any():
        return 0.0
    return float((1.0 - sample.marginals[outside, tags.index("O")]).max())


# ---------------------------------------------------------------- threshold and routing


def choose_threshold(samples: list[Sample], config: UncertaintyConfig | None = None) -> tuple[float, str]:
    """tau and a sentence saying how it was chosen. Entities with uncertainty > tau are delegated."""
    config = config or UncertaintyConfig()
    desc = sorted(uncertainties(samples), reverse=True)
    if config.tau is not None:
        return config.tau, f"tau = {config.tau} fixed by the configuration"
    if not desc:
        return 1.0, "no predicted entity: nothing to delegate"
    tau = tau_for(desc, round(config.target_rate * len(desc)))
    rate = sum(x > tau for x in desc) / len(desc)
    return tau, (
        f"tau = {tau:.4f} delegates {rate:.1%} of {len(desc)} predicted entities "
        f"(target {config.target_rate:.0%}; no labels used)"
    )


def tau_for(desc: list[float], k: int) -> float:
    """A threshold with (at most, under ties) the k largest of the descending uncertainties above it."""
    upper = desc[k - 1] if k > 0 else 1.0
    lower = desc[k] if k < len(desc) else -1e-9
    return (upper + lower) / 2


def route(samples: list[Sample], tau: float) -> None:
    """Mark every predicted entity `delegated` (uncertainty strictly above tau) or not, in place: the one
    place the routing is decided (refinement, the counts and the run's page read the mark).
    [0.9, 0.2] with tau 0.5 -> delegated [True, False]."""
    uncertainties(samples)
    for s in samples:
        for e in s.entities:
            e.delegated = e.uncertainty > tau


def delegated(sample: Sample) -> list[Entity]:
    """The entities of one sample that route() marked for the MLLM; an error when it was never routed."""
    if any(e.delegated is None for e in sample.entities):
        raise ValueError(f"sample {sample.id}: an entity was never routed: call uncertainty.route() first")
    return [e for e in sample.entities if e.delegated]


def uncertainties(samples: list[Sample]) -> list[float]:
    """Every predicted entity's uncertainty, in sample order; an error when one was never estimated."""
    values = [e.uncertainty for s in samples for e in s.entities]
    if any(x is None for x in values):
        raise ValueError("an entity has no uncertainty (None): call uncertainty.estimate() first")
    return values
