"""The token-LM stage names, in generation order. Defined here only: a stage's name is also
its config file, its ``PIPELINE.yaml`` key, its sampling defaults' key and its run folder."""

SEMANTIC, COARSE, FINE = "semantic", "coarse", "fine"
LM_STAGES = (SEMANTIC, COARSE, FINE)
