"""DP-SGD training, privacy accounting and the per-user privacy ledger."""

from fedpers.privacy.accounting import EpsilonReport, GaussianEvent, calibrate_noise_multiplier, epsilon, epsilon_report
from fedpers.privacy.dp_sgd import DPConfig, TrainConfig, TrainResult, train
from fedpers.privacy.ledger import LedgerEntry, PrivacyLedger

__all__ = [
    "DPConfig",
    "EpsilonReport",
    "GaussianEvent",
    "LedgerEntry",
    "PrivacyLedger",
    "TrainConfig",
    "TrainResult",
    "calibrate_noise_multiplier",
    "epsilon",
    "epsilon_report",
    "train",
]
