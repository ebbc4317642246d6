"""Builtin data sources, one module per public format; importing this package registers them all."""

from prefopt.data.sources import (  # noqa: F401  (imported for their @register_source side effect)
    generic,
    hh_rlhf,
    kto_mix,
    messages_label,
    sharegpt_ranking,
    stack_exchange,
    ultrafeedback_argilla,
    ultrafeedback_h4,
    ultrafeedback_raw,
    ultrafeedback_trl,
)
