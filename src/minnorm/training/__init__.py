"""Standard and adversarial training (PGD, DDN, any registered attack) with resumable checkpoints."""
from .adversary import Adversary, attack_mode
from .trainer import CHECKPOINT_NAME, accuracy, learning_rate, train

__all__ = ["CHECKPOINT_NAME", "Adversary", "accuracy", "attack_mode", "learning_rate", "train"]
