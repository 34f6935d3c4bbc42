"""Network modules: the EGNN denoiser with property heads, and a periodic DimeNet++."""
