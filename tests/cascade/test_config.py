"""Settings load from YAML and CASCADE_* variables, with errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade.config import ConfigError
from cascade.factory import build_router
from services.settings import load_service_settings


def test_embedded_defaults_are_two_llamacpp_tiers() -> None:
    settings = load_service_settings()
    assert [t.name for t in settings.tiers] == ["small", "large"]
    assert {t.engine.kind for t in settings.tiers} == {"llamacpp"}
    assert settings.tiers[1].price.input_per_million == pytest.approx(10 * settings.tiers[0].price.input_per_million)


def test_yaml_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cascade.yaml"
    config.write_text(
        "generation: {max_tokens: 12}\n"
        "tiers:\n"
        "  - {name: s, engine: {kind: scripted, model: tiny}, policy: v2}\n"
        "  - {name: m, engine: {kind: scripted, model: mid}, policy: v3}\n"
        "  - {name: l, engine: {kind: openai, model: big, base_url: 'http://127.0.0.1:9/v1'}}\n"
    )
    settings = load_service_settings(config)
    assert settings.generation.max_tokens == 12 and len(settings.tiers) == 3
    monkeypatch.setenv("CASCADE_GENERATION__MAX_TOKENS", "7")
    assert load_service_settings(config).generation.max_tokens == 7
    router = build_router(load_service_settings(config))
    assert [t.engine.model for t in router.tiers] == ["tiny", "mid", "big"]
    assert [getattr(t.policy, "name", "") for t in router.tiers[:2]] == ["v2", "v3"]


def test_invalid_config_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "cascade.yaml"
    config.write_text("tiers:\n  - {name: l, engine: {kind: openai, model: big}}\n")
    with pytest.raises(ConfigError, match=r"tiers\.0\.engine\.openai\.base_url: Field required"):
        load_service_settings(config)
    config.write_text("tiers:\n  - {name: s, engine: {kind: tpu, model: x}}\n")
    with pytest.raises(ConfigError, match=r"tiers\.0\.engine: Input tag 'tpu' found using 'kind'"):
        load_service_settings(config)


def test_a_prerouter_block_loads_its_file_and_embedder(tmp_path: Path) -> None:
    import numpy as np

    from cascade.prerouter import PreRouterFile, save

    save(PreRouterFile(models=("s", "l"), tiers=np.array([0, 1]), weights=np.zeros((1, 256, 2)),
                       biases=np.zeros((1, 2)), cost_coef=np.zeros((257, 2)), cost_intercept=np.zeros(2),
                       default_length=0.5, lam=0.0), tmp_path / "prerouter.json")
    config = tmp_path / "cascade.yaml"
    config.write_text(
        f"prerouter: {{path: '{tmp_path / 'prerouter.json'}', embedder: {{kind: static}}}}\n"
        "tiers:\n"
        "  - {name: s, engine: {kind: scripted, model: tiny}}\n"
        "  - {name: l, engine: {kind: scripted, model: big}}\n")
    router = build_router(load_service_settings(config))
    assert router.prerouter is not None and router.prerouter.embedder.name == "static-minilm-256"
    config.write_text(config.read_text().replace("kind: static", "kind: minilm"))
    with pytest.raises(ValueError, match="fitted on 256-d embeddings"):
        build_router(load_service_settings(config))
