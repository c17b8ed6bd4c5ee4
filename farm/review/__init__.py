"""Review: the review folder (`farm review`) and the live page (`farm serve`)."""
