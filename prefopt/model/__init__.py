"""Layer 3: model and tokenizer loading (hub, local, builtin:, registered names such as world:), log-probs, generation."""
