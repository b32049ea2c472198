"""DP-SGD training, privacy accounting and the per-user privacy ledger.

The names below load on first use, so that importing one light submodule (e.g.
:mod:`fedpers.privacy.user_level` from the ClientApp's release guard) does not import torch and Opacus.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "EpsilonReport": "accounting",
    "GaussianEvent": "accounting",
    "calibrate_noise_multiplier": "accounting",
    "epsilon": "accounting",
    "epsilon_report": "accounting",
    "DPConfig": "dp_sgd",
    "TrainConfig": "dp_sgd",
    "TrainResult": "dp_sgd",
    "train": "dp_sgd",
    "LedgerEntry": "ledger",
    "PrivacyLedger": "ledger",
    "SkellamEvent": "skellam",
    "sample_skellam": "skellam",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
