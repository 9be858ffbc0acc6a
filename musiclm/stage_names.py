"""The token-LM stage names. Defined here only: a stage's name is also its config file, its
``PIPELINE.yaml`` key, its sampling defaults' key and its run folder."""

SEMANTIC, COARSE, FINE = "semantic", "coarse", "fine"
LM_STAGES = (SEMANTIC, COARSE, FINE)  # MusicLM's cascade, in generation order
DELAY = "delay"  # one LM over every codec level, interleaved by the delay pattern (MusicGen)
STAGE_NAMES = (*LM_STAGES, DELAY)
# the upstream stages a stage cannot run without (a delay stage's optional semantic
# conditioning is checked when its checkpoint is loaded)
REQUIRES = {SEMANTIC: (), COARSE: (SEMANTIC,), FINE: (COARSE,), DELAY: ()}
ACOUSTIC_STAGES = (COARSE, FINE, DELAY)  # their codes, concatenated by level, are the audio
