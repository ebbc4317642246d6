"""Algorithm adapters: one small module per algorithm (``dpo.py``, ``ipo.py``, ``kto.py``, ``orpo.py``,
``simpo.py``, ``reward.py``, ``online_dpo.py``), each mapping a validated Recipe onto one TRL trainer — where KTO (say) maps onto TRL.

What an algorithm *is* is its row in :mod:`prefopt.config.algorithms`; :mod:`.base` holds the
:class:`Adapter` base class and the registry. Importing this package registers every adapter.
"""

from collections.abc import Callable

import torch

from prefopt.training.algorithms import dpo, ipo, kto, online_dpo, orpo, reward, simpo  # noqa: F401 - each registers its adapter
from prefopt.training.algorithms.base import Adapter, algorithm_names, get_adapter, register, registered

LOSS_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    name: adapter.reference_loss for name, adapter in registered().items()
}
"""Algorithm name → its loss formula (:mod:`prefopt.training.losses`), as the paper writes it."""

__all__ = ["LOSS_FUNCTIONS", "Adapter", "algorithm_names", "get_adapter", "register", "registered"]
