"""Farm on a Ray cluster: the driver and the actors that hold a runner."""
