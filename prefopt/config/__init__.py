"""Layer 1: the recipe schema, the table of algorithms, fidelity rules and smoke mode. No torch or trl at import time."""
