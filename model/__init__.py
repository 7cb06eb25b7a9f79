"""The Rimer forecaster: config, state, normalisation, network and checkpoints."""

from model.config import RimerConfig
from model.rimer import Rimer
from model.state import RimerState

__all__ = ["RimerConfig", "Rimer", "RimerState"]
