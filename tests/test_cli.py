"""Bad input: one clear message, exit code 2, nothing left behind that breaks a later run."""
import pytest

from agentic_compression.cli import main


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def _run(capsys, *args):
    code = main(["run", "--no-presets", *args])
    return code, capsys.readouterr().err


def test_unknown_model(capsys, data_dir, out):
    code, err = _run(capsys, "--model", "nobody/no-such-model", "--data-dir", str(data_dir), "--output-dir", str(out))
    assert code == 2 and "unknown model 'nobody/no-such-model'" in err and "->" in err
    assert not out.exists() or not any(out.iterdir())


def test_model_folder_without_config(capsys, data_dir, out, tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = _run(capsys, "--model", str(tmp_path / "empty"), "--data-dir", str(data_dir), "--output-dir", str(out))
    assert code == 2 and "has no config.json" in err


def test_missing_data_dir(capsys, tiny_dir, out, tmp_path):
    code, err = _run(capsys, "--model", str(tiny_dir), "--data-dir", str(tmp_path / "nope"), "--output-dir", str(out))
    assert code == 2 and "does not exist" in err and not out.exists()


def test_unknown_dataset(capsys, tiny_dir, data_dir, out):
    code, err = _run(capsys, "--model", str(tiny_dir), "--data-dir", str(data_dir), "--dataset", "imagenet",
                     "--output-dir", str(out))
    assert code == 2 and "unknown benchmark 'imagenet'" in err and "hellaswag" in err and "humaneval" in err


@pytest.mark.parametrize("flag,value,msg", [("--max-episodes", "0", "max_episodes"),
                                            ("--budget-hours", "-1", "budget_hours"),
                                            ("--limit", "0", "limit")])
def test_non_positive_limits(capsys, tiny_dir, data_dir, out, flag, value, msg):
    code, err = _run(capsys, "--model", str(tiny_dir), "--data-dir", str(data_dir), flag, value,
                     "--output-dir", str(out))
    assert code == 2 and msg in err and "greater than 0" in err and not out.exists()


def test_unwritable_output_dir(capsys, tiny_dir, data_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file")
    code, err = _run(capsys, "--model", str(tiny_dir), "--data-dir", str(data_dir), "--output-dir",
                     str(blocker / "sub"))
    assert code == 2 and "not writable" in err and blocker.read_text() == "I am a file"


def test_existing_experiment_is_never_overwritten(capsys, tiny_dir, data_dir, out):
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "final_results.json").write_text("{precious}")
    code, err = _run(capsys, "--model", str(tiny_dir), "--data-dir", str(data_dir), "--output-dir", str(out),
                     "--experiment", "mine")
    assert code == 2 and "already exists" in err
    assert (out / "mine" / "final_results.json").read_text() == "{precious}"


def test_bad_override(capsys, tiny_dir, data_dir, out):
    with pytest.raises(SystemExit) as e:
        main(["run", "--model", str(tiny_dir), "--data-dir", str(data_dir), "--set", "gptq-num_samples"])
    assert e.value.code == 2 and "METHOD.PARAM=VALUE" in capsys.readouterr().err
    code, err = _run(capsys, "--model", str(tiny_dir), "--data-dir", str(data_dir), "--output-dir", str(out),
                     "--set", "nosuch.x=1")
    assert code == 2 and "unknown method 'nosuch'" in err
    code, err = _run(capsys, "--model", str(tiny_dir), "--data-dir", str(data_dir), "--output-dir", str(out),
                     "--set", "gptq.num_samples=-3")
    assert code == 2 and "num_samples=-3 is outside" in err


def test_methods_and_spec_commands(capsys, tiny_dir):
    assert main(["methods"]) == 0
    table = capsys.readouterr().out
    assert "gptq" in table and "rtn" in table and "yes" in table
    assert main(["spec", str(tiny_dir)]) == 0
    assert '"source": "local"' in capsys.readouterr().out


def test_the_cli_and_the_api_default_to_the_same_run(tmp_path, monkeypatch):
    """Run options' defaults live in RunConfig only: `acf run` with no options and an API request with none
    describe the same run (an environment variable changes only the CLI's LLM settings, so none is set)."""
    from agentic_compression.cli import _parser, run_config
    from agentic_compression.service.api import RunRequest

    for var in ("ACF_LLM_MODEL", "ACF_LLM_BASE_URL", "OPENAI_BASE_URL", "ACF_LLM_MODE"):
        monkeypatch.delenv(var, raising=False)
    argv = ["run", "--model", "m", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path), "--experiment", "x"]
    a = _parser().parse_args(argv)
    cli = run_config(a, argv[1:]).model_dump()
    api = RunRequest(model="smollm2-135m", experiment="x").to_config("m", tmp_path, tmp_path).model_dump()
    assert cli == api
    assert cli["eval"]["limit"] == 100 and cli["max_episodes"] == 10 and cli["llm"]["model"] == "gpt-4o"


def test_the_same_options_given_to_the_cli_and_the_api_make_the_same_run(tmp_path, monkeypatch):
    """Both are generated from one option list (options.py): each option lands at the same RunConfig paths,
    e.g. --threads in the loop's and the evaluation's settings, --set in method_overrides, a goal in goals."""
    from agentic_compression.cli import _parser, run_config
    from agentic_compression.service.api import RunRequest

    for var in ("ACF_LLM_MODEL", "ACF_LLM_BASE_URL", "OPENAI_BASE_URL", "ACF_LLM_MODE"):
        monkeypatch.delenv(var, raising=False)
    argv = ["run", "--model", "m", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path), "--experiment", "x",
            "--benchmarks", "arc_easy", "--max-episodes", "3", "--budget-hours", "1.5", "--patience", "2",
            "--policy", "random", "--parallel", "2", "--limit", "20", "--ppl-tokens", "512", "--repeats", "2",
            "--threads", "1", "--targets", "llamacpp,ortgenai", "--seed", "7", "--force",
            "--set", "gptq.num_samples=32", "--max-size-gb", "0.2"]
    cli = run_config(_parser().parse_args(argv), argv[1:])
    api = RunRequest(model="smollm2-135m", experiment="x", benchmarks="arc_easy", max_episodes=3, budget_hours=1.5,
                     patience=2, policy="random", parallel=2, limit=20, ppl_tokens=512, repeats=2, threads=1,
                     target="llamacpp,ortgenai", seed=7, force=True, method_overrides={"gptq": {"num_samples": 32}},
                     goals={"max_size_gb": 0.2}).to_config("m", tmp_path, tmp_path)
    assert cli.model_dump() == api.model_dump()
    assert (cli.threads, cli.eval.threads, cli.eval.benchmark, cli.eval.target) == (1, 1, "arc_easy",
                                                                                   "llamacpp,ortgenai")
    assert cli.method_overrides == {"gptq": {"num_samples": 32}} and cli.goals.max_size_gb == 0.2


def test_targets_auto_resolves_to_the_runtimes_installed_here(monkeypatch, tmp_path, capsys, data_dir):
    """auto (the default without ACF_TARGETS): the CPU runtimes that are installed, in order; transformers where
    none is, saying so; transformers for HumanEval; on CUDA, vLLM where it runs, and transformers."""
    from agentic_compression import targets
    from agentic_compression.config import RunConfig

    monkeypatch.delenv("ACF_TARGETS")
    cfg = RunConfig(model="m", data_dir=data_dir)
    assert cfg.eval.target == "auto"
    have = {"llamacpp": True, "ortgenai": True, "vllm": False, "transformers": True}
    for name, t in targets.TARGETS.items():
        monkeypatch.setattr(t, "available", lambda n=name: (have[n], "" if have[n] else f"{n} is not installed"))
    resolved, why = targets.resolve(cfg)
    assert resolved.eval.target == "llamacpp,ortgenai" and "installed here" in why
    have["llamacpp"] = False
    assert targets.resolve(cfg)[0].eval.target == "ortgenai"
    have["ortgenai"] = False
    resolved, why = targets.resolve(cfg)
    assert resolved.eval.target == "transformers" and "neither llamacpp nor ortgenai is installed" in why
    have["llamacpp"] = have["ortgenai"] = True
    assert targets.resolve(cfg.model_copy(update={"eval": cfg.eval.model_copy(
        update={"benchmark": "hellaswag,humaneval"})}))[0].eval.target == "transformers"
    assert targets.choose("cuda") == (["transformers"], "the runtimes installed here that serve on CUDA")
    have["vllm"] = True
    assert targets.choose("cuda")[0] == ["vllm", "transformers"]
    named = RunConfig(model="m", data_dir=data_dir, eval={"target": "ortgenai"})
    assert targets.resolve(named) == (named, None)  # a run that names its targets gets them
    assert main(["run", "--model", "m", "--data-dir", str(data_dir), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "  target: auto\n" in printed and "# target auto resolves here to llamacpp,ortgenai" in printed
    monkeypatch.setenv("ACF_TARGETS", "llamacpp")
    assert RunConfig(model="m", data_dir=data_dir).eval.target == "llamacpp"
    monkeypatch.setenv("ACF_TARGETS", "tensorrt")
    assert main(["run", "--model", "m", "--data-dir", str(data_dir), "--print-config"]) == 2
    assert "unknown target 'tensorrt'" in capsys.readouterr().err
