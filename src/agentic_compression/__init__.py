"""acf, the Agentic Compression Framework: finds Pareto-optimal compressed versions of a causal LM."""

__version__ = "0.1.0"
