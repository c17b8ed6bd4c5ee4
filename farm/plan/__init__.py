"""The plan stage: a `Spec` cut into task records with keys, and the forecast of their time."""
