"""prefopt: preference-optimization fine-tuning on Hugging Face TRL.

DPO, IPO, KTO, ORPO and SimPO from one YAML recipe, with paper-faithful losses, a ground-truth
world that proves each algorithm improves a model, and a data layer that never drops a row silently.
"""

__version__ = "0.1.0"
