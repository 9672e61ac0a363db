"""Which epoch's model gives the maps: one rule for the CLI, the API and the Train widget.

``RVAEConfig.epoch_selection`` names the rule; :class:`~.train.Trainer` asks this module
how often to encode the whole scan during training and whether to keep the best state,
and applies the rule in :meth:`~.train.Trainer.finish`. Changing the default rule is
changing :data:`DEFAULT` (and the config's default) here, nowhere else.

Rules
-----
``"com_correlation"``
    The published study's rule: the maps are correlated with the COM magnitude about
    :data:`CHECKS` times during training and the state whose best latent follows it most
    closely (largest |r|) is kept. Needs the COM maps; without them it falls back to the
    last epoch.
``"last"``
    The model as it is after the last epoch.
"""

from __future__ import annotations

from typing import Any

EPOCH_SELECTIONS = ("com_correlation", "last")
DEFAULT = "com_correlation"
#: Encodings of the whole scan during one training under ``"com_correlation"``.
CHECKS = 20


def correlate_every(config: Any, total_epochs: int, has_com: bool) -> int:
    """Epochs between two encodings of the whole scan during training (0: none).

    An explicit ``config.correlate_every`` wins (the widget plots |r| live); otherwise the
    rule decides: about :data:`CHECKS` checks for ``"com_correlation"`` with COM maps.
    """
    if config.correlate_every:
        return int(config.correlate_every)
    if config.epoch_selection == "com_correlation" and has_com:
        return max(1, int(total_epochs) // CHECKS)
    return 0


def keeps_best(config: Any, has_com: bool) -> bool:
    """Whether the rule keeps the best state seen during training."""
    return config.epoch_selection == "com_correlation" and has_com


def describe(config: Any, has_com: bool) -> str:
    """The rule in words, for logs and results files."""
    if keeps_best(config, has_com):
        return "largest latent–COM magnitude |r| (checked during training)"
    return "last epoch"
