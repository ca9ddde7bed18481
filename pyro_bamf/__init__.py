"""pyro-bamf: Bayesian Attentional Matrix Factorization in Pyro."""

__version__ = "0.1.0"
