"""acf, the Agentic Compression Framework: finds Pareto-optimal compressed versions of a causal LM.

    import agentic_compression as acf
    summary = acf.run(model="smollm2-135m", data_dir="../shared/data", max_episodes=4)
"""

__version__ = "0.1.0"


def run(**config) -> dict:
    """Run one experiment (keyword arguments are RunConfig's fields) and return its final_results summary."""
    from .config import RunConfig
    from .loop.experiment import Experiment

    return Experiment(RunConfig(**config)).run()
