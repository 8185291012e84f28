"""The replay benchmark's engine on the measured grid (bench/grid_smollm2.json): deterministic for a seed, the
hypervolume never falls, never exceeds the grid's, and every replayed proposal is a measured grid strategy."""
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))


@pytest.fixture(scope="module")
def env(smollm2_dir):
    import replay

    return replay.load_env(BENCH / "grid_smollm2.json")


@pytest.mark.parametrize("name", ["rule", "random", "tpe", "nsga2", "bandit", "pbt"])
def test_replay_is_deterministic_and_bounded(env, name):
    import replay

    from agentic_compression.policies import RulePolicy, search

    def policy(seed):
        return RulePolicy() if name == "rule" else search.make(name, seed)

    first, again = replay.replay(policy(1), env, 8), replay.replay(policy(1), env, 8)
    assert first == again and len(first) == 8
    full = replay.full_hypervolume(env)
    assert all(b >= a - 1e-12 for a, b in zip(first, first[1:])) and first[-1] <= full + 1e-9
    if name in ("random", "tpe"):
        assert replay.replay(policy(2), env, 8) != first  # the seed matters
