"""pyro-bamf: Bayesian Attentional Matrix Factorization in Pyro."""

__version__ = "0.1.0"

from pyro_bamf.attention import ScoreNetwork, register_score_network  # noqa: E402
from pyro_bamf.batch import Batch  # noqa: E402
from pyro_bamf.config import BAMFConfig, ConfigError  # noqa: E402
from pyro_bamf.families import register_guide, register_prior  # noqa: E402
from pyro_bamf.metrics import ranking_metrics  # noqa: E402
from pyro_bamf.model import BAMF  # noqa: E402
from pyro_bamf.recommender import BAMFRecommender, CheckpointError  # noqa: E402

__all__ = [
    "BAMF",
    "BAMFConfig",
    "BAMFRecommender",
    "Batch",
    "CheckpointError",
    "ConfigError",
    "ScoreNetwork",
    "ranking_metrics",
    "register_guide",
    "register_prior",
    "register_score_network",
]
