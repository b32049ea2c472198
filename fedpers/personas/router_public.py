"""The router's public start: what the server learns from the run's public data for the router (its feature
map, the public users' statistics, the held-out prompts to calibrate on).

Kept apart from :mod:`fedpers.personas.router_round` because it reads the public data through
:mod:`fedpers.warmstart` (which trains): what only describes a router round (the audit, the devices' task)
imports no training code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedpers.federated import FederatedConfig
from fedpers.personas.context import CONTEXT_DIMENSION
from fedpers.personas.encoder import TextEncoder
from fedpers.personas.features import FeatureMap
from fedpers.personas.prompt_choice import PublicDiscovery, discover_public
from fedpers.personas.router_data import encode_users, public_statistics, user_prompts
from fedpers.personas.router_round import NO_PUBLIC_START, PublicStart, router_layout


def public_router_features(
    config: FederatedConfig, encoder: TextEncoder, personas: Sequence[str]
) -> FeatureMap:
    """The router's feature map from the run's public data (``public_data``; see :mod:`fedpers.warmstart`):
    the opening prompts of the public split's training conversations, embedded; LDA when they declare every
    one of ``personas``, PCA otherwise, the identity when the run has no public data
    (:func:`fedpers.personas.features.public_feature_map`)."""
    from fedpers.personas.features import public_feature_map
    from fedpers.warmstart import public_split

    train, _ = public_split(config)
    users = user_prompts(train)
    rows = encode_users(users, encoder)
    text = (
        np.concatenate([u.text for u in rows])
        if rows
        else np.zeros((0, encoder.dimension), np.float32)
    )
    labels = [u.persona for u in rows for _ in u.text]
    source = f"public_data {config.dataset.public_data!r}, {len(text)} prompts"
    return public_feature_map(text, labels, tuple(personas), source=source)


def public_router_start(config: FederatedConfig, encoder: TextEncoder | None = None) -> PublicStart:
    """The router's public start for a run with these settings (:class:`PublicStart`); without public data,
    the identity map, no prior and no calibration."""
    from fedpers.warmstart import public_split

    if not config.dataset.public_data:
        return NO_PUBLIC_START
    if encoder is None:
        from fedpers.personas.encoder import default_encoder

        encoder = default_encoder()
    personas = tuple(config.persona_names)
    layout = router_layout(config)
    features = public_router_features(config, encoder, personas)
    train, heldout = public_split(config)
    users = encode_users(
        user_prompts(train), encoder, layout.context_dimension or CONTEXT_DIMENSION
    )
    prior = public_statistics(users, personas, features, use_context=layout.context_dimension > 0)
    held = encode_users(
        user_prompts(heldout), encoder, layout.context_dimension or CONTEXT_DIMENSION
    )
    return PublicStart(features, prior, tuple(u for u in held if u.persona in set(personas)))


def public_persona_discovery(
    config: FederatedConfig, encoder: TextEncoder | None = None
) -> PublicDiscovery:
    """The persona centroids of an inferred-persona run that chooses from the prompts
    (:mod:`fedpers.personas.prompt_choice`): from the public split's training conversations (their opening
    prompts, per public user), K = the run's number of personas, seeded by the run's ``seed``."""
    from fedpers.warmstart import public_split

    if not config.dataset.public_data:
        raise ValueError(
            "persona_choice 'prompts': the run has no public_data to place the centroids"
        )
    if encoder is None:
        from fedpers.personas.encoder import default_encoder

        encoder = default_encoder()
    train, _ = public_split(config)
    users = [u for u in encode_users(user_prompts(train), encoder) if len(u.text)]
    if len(users) < 2:
        raise ValueError(
            f"persona_choice 'prompts': public_data {config.dataset.public_data!r} has "
            f"{len(users)} users with prompts; at least two are needed"
        )
    means = np.stack([u.text.mean(0) for u in users])
    prompts = np.concatenate([u.text for u in users])
    return discover_public(
        means,
        prompts,
        config.persona_names,
        np.random.default_rng(config.model.seed),
        public_personas=[u.persona for u in users],
        public_ids=[u.user_id for u in users],
    )
