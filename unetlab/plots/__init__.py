"""Plot helpers, one module per topic (``denoise``, ``embedding``, ``attention``, ...)."""
