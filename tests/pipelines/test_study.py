"""`cascade study` (calibrate → fit → evaluate on the QA datasets): the GPU config of the seed's pair
validates and `make eval-gpu` runs it; the same pipeline runs end to end on CPU with a tiny vLLM model
in place of both models."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
import pytest
import yaml

from pipelines.calibrate import read_records
from services.settings import load_service_settings
from tests.conftest import CASCADE

ROOT = Path(__file__).resolve().parents[2]
GPU_CONFIG = ROOT / "infra" / "eval-gpu.yaml"


def test_the_gpu_config_is_the_seeds_pair_priced_one_to_ten_and_make_eval_gpu_runs_the_study() -> None:
    settings = load_service_settings(GPU_CONFIG)
    small, large = settings.tiers
    assert (small.engine.kind, large.engine.kind) == ("vllm", "vllm")
    assert small.engine.model == "Qwen/Qwen2.5-1.5B-Instruct"
    assert large.engine.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert large.price.input_per_million == pytest.approx(10 * small.price.input_per_million)
    assert large.price.output_per_million == pytest.approx(10 * small.price.output_per_million)
    commands = subprocess.run(["make", "-s", "-n", "-B", "eval-gpu"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    study = [line for line in commands.splitlines() if " study " in line]
    assert study and "--config infra/eval-gpu.yaml" in study[0] and "--limit 2000" in study[0], commands


@pytest.mark.integration
def test_the_study_runs_end_to_end_with_a_tiny_vllm_model(tmp_path: Path, data_dir: Path) -> None:
    from tests.tiny_model import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny", max_positions=8192)
    config = yaml.safe_load(GPU_CONFIG.read_text())
    for tier in config["tiers"]:  # the GPU config with the tiny model on CPU in place of both models
        tier["engine"].update(model=str(model), engine_args={
            "dtype": "float32", "enforce_eager": True, "max_model_len": 8192, "kv_cache_memory_bytes": 64 << 20})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "study"
    done = subprocess.run(
        [CASCADE, "study", "--config", str(tmp_path / "tiny.yaml"), "--datasets", "squad,squad_v2,hotpotqa",
         "--limit", "24", "--batch-size", "8", "--splits", "2", "--bootstrap", "20", "--out", str(out),
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert [row["dataset"] for row in summary["datasets"]] == ["squad", "squad_v2", "hotpotqa"]
    for dataset in ("squad", "squad_v2", "hotpotqa"):
        records = read_records(out / "records" / f"{dataset}.jsonl")
        assert len(records) == 24
        usable = [r for r in records if r.error is None]
        assert usable, f"every {dataset} prompt was refused"
        assert all([t.tier for t in r.tiers] == ["small", "large"] and all(t.tokens for t in r.tiers) for r in usable)
    rows = {row["dataset"]: row for row in summary["datasets"]}
    # The first 24 SQuAD questions are about one article: no held-out split by article, and it says so.
    assert "groups" in rows["squad"]["held_out"]["error"]
    # HotpotQA groups by question: the held-out protocol runs and ranks the baselines.
    assert "min logprob (Chow-quantile)" in rows["hotpotqa"]["held_out"]
    assert (out / "hotpotqa" / "summary.md").is_file() and (out / "hotpotqa" / "deferral_curves.png").is_file()
    assert "| hotpotqa | " in (out / "summary.md").read_text()
