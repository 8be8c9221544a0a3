"""alive-exp: ALIVE (Adversarial Learning with Instructive Verbal Evaluation) for language models."""

__version__ = "0.1.0"
