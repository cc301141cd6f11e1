"""stepaudio: Step-Audio-R1 audio reasoning models, faithful and fast, on one GPU or a CPU."""

__version__ = "0.1.0"
