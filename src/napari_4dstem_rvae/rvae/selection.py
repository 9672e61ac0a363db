"""Which epoch's model gives the maps: one rule for the CLI, the API and the Train widget.

``RVAEConfig.epoch_selection`` names the rule; :class:`~.train.Trainer` asks this module
how often to encode the whole scan during training and whether to keep the best state,
and applies the rule in :meth:`~.train.Trainer.finish`. Changing the default rule is
changing :data:`DEFAULT` here, nowhere else.

Rules
-----
``"held_out"`` (default)
    The loss (negative ELBO) on the held-out test positions is checked after every epoch and
    the state with the lowest one is kept; at the end the last state is used unless its
    held-out loss is worse than that minimum by more than twice its standard error (paired
    over the same test patterns): then the kept state. It uses nothing but the data and
    guards against training too long (the study saw its maps degrade) without penalising
    noise. Without test positions, the last epoch.
``"com_correlation"``
    The published study's rule: the maps are correlated with the COM magnitude about
    :data:`CHECKS` times during training and the state whose best latent follows it most
    closely (largest |r|) is kept. It needs the COM maps (without them: the last epoch) —
    and it selects by the quantity the maps are then judged on.
``"last"``
    The model as it is after the last epoch.
"""

from __future__ import annotations

from typing import Any

EPOCH_SELECTIONS = ("held_out", "com_correlation", "last")
DEFAULT = "held_out"
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


def keeps_best(config: Any, has_com: bool, has_test: bool = True) -> bool:
    """Whether the rule keeps the best state seen during training."""
    if config.epoch_selection == "com_correlation":
        return has_com
    return config.epoch_selection == "held_out" and has_test


def describe(config: Any, has_com: bool, has_test: bool = True) -> str:
    """The rule in words, for logs and results files."""
    if not keeps_best(config, has_com, has_test):
        return "last epoch"
    if config.epoch_selection == "com_correlation":
        return "largest latent–COM magnitude |r| (checked during training)"
    return "lowest held-out loss (negative ELBO on the test positions)"
