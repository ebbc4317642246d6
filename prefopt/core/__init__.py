"""Layer 0: errors, hashing, cache paths, runtime (threads, world size). Imports no torch or trl at import time."""
