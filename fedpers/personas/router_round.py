"""The router's round of a federated run: what a device uploads, and what the server learns from the sum.

After the last training round the server runs one more SecAgg+ session, task ``router``, over every device
(:data:`fedpers.releases.ROUTER_TASK`). It is the private path of :mod:`fedpers.personas.router_stats`, on the
wire:

**Device** (:func:`device_router_upload`, the one place the router's features are computed). The opening user
message of each of the device's *training* conversations (:func:`fedpers.personas.router_data.user_prompts`)
is embedded by all-MiniLM-L6-v2 (:func:`fedpers.personas.encoder.default_encoder`, loaded only here), with the
conversation's context vector when the run's layout carries context; the contribution sits in the slot of
the device's persona (declared, or the one it chose privately for this run; none: an all-zero contribution,
still noised and sent, so that the device is not told apart by its absence). Noise for
``(router_epsilon, delta)`` (:func:`~fedpers.personas.router_stats.noise_for_epsilon`) is recorded in the
device's user-level ledger *before* the upload is computed (a cap refuses it), and the device adds its share
``v / t`` of Skellam noise, ``t`` the reconstruction threshold of its own SecAgg+ state
(:func:`~fedpers.personas.router_stats.private_upload`). The integer levels go through SecAgg+ as they are,
on the router's grid (:meth:`~fedpers.personas.router_stats.StatsLayout.grid`).

**Server** (:func:`statistics_from_mean`, :func:`router_from_round`). SecAgg+ hands the strategy the mean of
the ``n`` uploads, dequantized (``mean = total / (n s) - c``); ``s n (mean + c)`` is the unmasked integer sum
again, exactly (it is an integer; the float error is far below one half), which
:func:`~fedpers.personas.router_stats.statistics_from_sum` turns into noised per-persona sums and counts. The
router's centroids are their directions (:func:`~fedpers.personas.centroid.model_from_statistics`), none for a
persona whose noised count is below the run's minimum-clients gate (its count is not published either).

**Checks** (:func:`router_sum_problems`). SecAgg+ hides who sent what, so a device could shift its masked upload;
the sum must be one that ``n`` honest uploads can give: each block of an upload has L2 norm at most one, so every
coordinate of the text and context sums lies in ``[-n, n]`` and every count in ``[0, n]``, plus the devices' noise
(std at most ``sqrt(n v / 2) / s`` per coordinate, each device adding ``v / t`` with ``t >= 2``) with
:data:`NOISE_MARGIN` standard deviations to spare. A sum outside is rejected: no router.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedpers.data.schema import Conversation
from fedpers.federated import FederatedConfig
from fedpers.personas.centroid import CentroidRouterModel, model_from_statistics
from fedpers.personas.context import CONTEXT_DIMENSION
from fedpers.personas.encoder import ENCODER_DIMENSION, TextEncoder
from fedpers.personas.features import IDENTITY, FeatureMap
from fedpers.personas.router_data import (
    EncodedUser,
    contributions,
    encode_users,
    mapped,
    user_prompts,
)
from fedpers.personas.router_stats import (
    CLIPPING_RANGE,
    RouterStatistics,
    StatsLayout,
    noise_for_epsilon,
    privacy_summary,
    private_upload,
    statistics_from_sum,
)
from fedpers.privacy.ledger import PrivacyLedger

NOISE_MARGIN = 8.0
"""Standard deviations of the devices' noise a router sum may stray outside what honest uploads give."""
NO_PERSONAS_DATA = "shakespeare"
"""The built-in data that declares no personas (its profile is the speaker, not a persona or context)."""


def router_round_off(config: FederatedConfig) -> str | None:
    """Why a run with these settings has no router round (``None``: it has one)."""
    if config.privacy.router_epsilon <= 0:
        return "router_epsilon is 0"
    if not config.aggregation.secure_aggregation:
        return "secure aggregation is off (the router's statistics travel only inside SecAgg+)"
    if config.dataset.data == NO_PERSONAS_DATA:
        return f"the {NO_PERSONAS_DATA} data declares no personas"
    return None


def router_layout(config: FederatedConfig, features: FeatureMap = IDENTITY) -> StatsLayout:
    """The upload layout every device and the server use: the run's personas, all-MiniLM-L6-v2 embeddings
    mapped by the public ``features`` map and, unless the data carries no context, the hashed context vector."""
    context = 0 if config.dataset.data == NO_PERSONAS_DATA else CONTEXT_DIMENSION
    return StatsLayout(tuple(config.persona_names), features.dimension(ENCODER_DIMENSION), context)


@dataclass(frozen=True)
class PublicStart:
    """What the server learns from the run's public data (``public_data``; never a device's) for the router:
    the feature map the devices apply (:mod:`fedpers.personas.features`), the public users' clean statistics
    added to the devices' noised sums (:func:`~fedpers.personas.router_data.public_statistics`; ``None``
    when the public data declares none of the run's personas) and the public held-out prompts, with their
    contexts and personas, on which temperature and threshold are calibrated."""

    features: FeatureMap
    prior: RouterStatistics | None
    heldout: tuple[EncodedUser, ...]


NO_PUBLIC_START = PublicStart(IDENTITY, None, ())
# what a device's ledger entry says when it had no sentence encoder (no `router` extra) and sent its noise only
NO_ENCODER = "empty: no sentence encoder on the device"


def device_router_upload(
    conversations: Sequence[Conversation],
    persona: str | None,
    layout: StatsLayout,
    epsilon: float,
    delta: float,
    threshold: int,
    ledger: PrivacyLedger,
    encoder: TextEncoder | None = None,
    rng: np.random.Generator | None = None,
    features: FeatureMap = IDENTITY,
    **details,
) -> np.ndarray:
    """One device's router upload (int64 levels, ``layout.dimension`` of them), recorded in ``ledger`` first.

    ``conversations`` are the device's training conversations, all of one user; ``persona`` the slot they go
    to (``None``, or a persona outside the layout: an all-zero contribution); ``threshold`` SecAgg+'s
    reconstruction threshold on this device. ``encoder`` defaults to all-MiniLM-L6-v2 (loaded on first use);
    ``rng`` to one seeded from the OS CSPRNG (pass one only to reproduce a benchmark). The embeddings are
    mapped by the public ``features`` map (unit rows again) before they are summed."""
    if threshold < 2:
        raise ValueError(
            f"the router's noise share needs SecAgg+'s reconstruction threshold (at least 2), got {threshold}"
        )
    if not epsilon > 0:
        raise ValueError(f"the router's epsilon must be > 0, got {epsilon}")
    noise = noise_for_epsilon(epsilon, delta, layout)
    slot = persona if persona in layout.personas else None
    users = {c.user_id for c in conversations}
    if len(users) > 1:
        raise ValueError(
            f"a device's router upload is one user's, got conversations of {len(users)}"
        )
    contribution = np.zeros(layout.dimension)
    prompts = user_prompts([dataclasses.replace(c, persona=slot) for c in conversations])
    if slot is not None and prompts and prompts[0].prompts and encoder is None:
        from fedpers.personas import encoder as encoder_module

        # no `router` extra: the noise share alone, so the session keeps its devices
        try:
            encoder = encoder_module.default_encoder()
        except ImportError as err:
            logging.getLogger(__name__).warning(
                "router round: no sentence encoder on this device (%s); it sends its noise share over an "
                "empty contribution",
                err,
            )
            details = {**details, "upload": NO_ENCODER}
            slot = None
    if slot is not None and prompts and prompts[0].prompts and encoder is not None:
        if features.dimension(encoder.dimension) != layout.text_dimension:
            raise ValueError(
                f"the encoder's {encoder.dimension}-dimensional embeddings, mapped by the {features.kind} "
                f"feature map, have {features.dimension(encoder.dimension)} dimensions; the layout "
                f"{layout.text_dimension}"
            )
        encoded = encode_users(prompts, encoder, layout.context_dimension or CONTEXT_DIMENSION)
        if features.kind != "identity":
            encoded = [mapped(u, features) for u in encoded]
        (contribution,) = contributions(encoded, layout, use_context=layout.context_dimension > 0)
    return private_upload(
        contribution,
        layout,
        noise,
        threshold,
        ledger,
        rng,
        epsilon=epsilon,
        delta=delta,
        **details,
    )


def statistics_from_mean(
    mean: Sequence[np.ndarray], devices: int, layout: StatsLayout
) -> RouterStatistics:
    """The noised statistics from what SecAgg+ hands the strategy: the dequantized mean of ``devices`` uploads
    (see the module docstring)."""
    if devices < 1:
        raise ValueError(f"no uploads behind the mean ({devices} devices)")
    x = np.concatenate([np.ravel(np.asarray(a, dtype=np.float64)) for a in mean])
    if x.shape != (layout.dimension,):
        raise ValueError(f"a router sum has {layout.dimension} coordinates, got {x.shape[0]}")
    total = np.rint(layout.levels_per_unit * devices * (x + CLIPPING_RANGE))
    return statistics_from_sum(total, devices, layout)


def router_sum_problems(
    stats: RouterStatistics, devices: int, layout: StatsLayout, epsilon: float, delta: float
) -> list[str]:
    """What makes ``stats`` a sum that ``devices`` honest uploads with noise for ``(epsilon, delta)`` cannot give
    (see the module docstring); empty when it is plausible."""
    noise = noise_for_epsilon(epsilon, delta, layout)
    slack = NOISE_MARGIN * math.sqrt(devices * noise.variance / 2.0) / layout.levels_per_unit
    problems = []
    for name, values in (("text sums", stats.text_sums), ("context sums", stats.context_sums)):
        if values.size and not np.all(np.abs(values) <= devices + slack):
            problems.append(
                f"{name}: a coordinate of {float(np.max(np.abs(values))):.4g} where {devices} uploads give "
                f"at most {devices} (+ {slack:.3g} of noise)"
            )
    counts = np.asarray(stats.counts, dtype=np.float64)
    if not np.all((counts >= -slack) & (counts <= devices + slack)):
        problems.append(f"counts: outside [0, {devices}] by more than the noise ({slack:.3g})")
    if not np.all(np.isfinite(counts)):
        problems.append("counts: not finite")
    return problems


def router_from_round(
    stats: RouterStatistics,
    layout: StatsLayout,
    config: FederatedConfig,
    devices: int,
    public: PublicStart = NO_PUBLIC_START,
    **info,
) -> CentroidRouterModel:
    """The router learned from one router round's statistics, with what it cost recorded in its ``info``.

    A persona whose noised count is below the minimum-clients gate contributes nothing (its sums and count
    are dropped, its count is not published); the public users' statistics (``public.prior``) are added to
    what is left, so such a persona keeps the public data's centroid, and every centroid lives in the space
    of ``public.features``. Temperature and threshold are calibrated on the public held-out prompts
    (:func:`~fedpers.personas.centroid.calibrate`, 90 % accuracy of the confident choices) when there are any."""
    from fedpers.personas.centroid import calibrate

    noise = noise_for_epsilon(config.privacy.router_epsilon, config.privacy.delta, layout)
    summary = privacy_summary(noise, config.privacy.delta)
    settings = {} if layout.context_dimension else {"context_weight": 0.0}
    gate = float(config.server.min_clients)
    # no count below the minimum-clients gate is published (those personas' private sums are not used either)
    keep = stats.counts >= gate
    stats = RouterStatistics(
        stats.personas,
        np.where(keep[:, None], stats.text_sums, 0.0),
        np.where(keep[:, None], stats.context_sums, 0.0),
        np.where(keep, stats.counts, 0.0),
    )
    if public.prior is not None:
        stats = stats + public.prior
    model = model_from_statistics(
        stats,
        min_count=gate if public.prior is None and gate > 0 else 1e-12,
        features=public.features,
        info={
            **info,
            "source": "federated router round: private statistics under SecAgg+",
            "devices": devices,
            "min_count": config.server.min_clients,
            "router_epsilon": config.privacy.router_epsilon,
            "secagg_threshold_fraction": config.aggregation.secagg_threshold,
            "features": public.features.kind,
            "features_source": public.features.source,
            "public_users": 0 if public.prior is None else int(round(public.prior.counts.sum())),
            "calibrated": False,
            **summary,
        },
        **settings,
    )
    if public.heldout:
        texts = np.concatenate([u.text for u in public.heldout])
        contexts = np.concatenate([u.context for u in public.heldout])
        labels = [u.persona for u in public.heldout for _ in u.text]
        cal = calibrate(
            model,
            texts,
            contexts if layout.context_dimension else None,
            [str(x) for x in labels],
            target_accuracy=0.9,
        )
        model = model.with_settings(
            temperature=cal.temperature,
            threshold=cal.threshold,
            info={**model.info, "calibrated": True, "calibration": cal.to_dict()},
        )
    return model


__all__ = [
    "NO_PUBLIC_START",
    "PublicStart",
    "device_router_upload",
    "router_from_round",
    "router_layout",
    "router_round_off",
    "router_sum_problems",
    "statistics_from_mean",
]
