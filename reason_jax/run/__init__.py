"""The run: config in, policy built, RL loop (rollout -> verify -> learn), checkpoints, the
SFT cold start, and the commands that move weights in and out (import-hf, export-hf)."""
