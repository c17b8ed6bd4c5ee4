"""The spec stage: a storyboard TOML read, checked and expanded (sweeps), its outputs and the codec table."""
