"""The committed template is never written; the live config is a copy that holds the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from conflict_core import serve_config
from conflict_core.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[2]


def test_the_live_config_is_copied_from_the_template_and_the_template_stays_as_it_was(tmp_path: Path) -> None:
    template = tmp_path / "serve_config.yaml"
    template.write_text((REPO / "serve_config.yaml").read_text())
    before = template.read_bytes()
    live = serve_config.ensure_live(template, tmp_path / "data" / "serve_config.yaml")
    serve_config.set_model(live, version="v7", artifact_path="/m/v7.joblib", artifact_sha256="ab" * 32)

    assert template.read_bytes() == before
    assert serve_config.inference_user_config(serve_config.read(live))["model_version"] == "v7"
    assert serve_config.inference_user_config(serve_config.read(template))["model_version"] is None
    # A second publish edits the live copy; it is not copied from the template again.
    assert serve_config.ensure_live(template, live) == live
    assert serve_config.inference_user_config(serve_config.read(live))["model_version"] == "v7"
    assert "# The deployable description" in live.read_text()  # comments survive


def test_a_missing_template_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        serve_config.ensure_live(tmp_path / "nope.yaml", tmp_path / "live.yaml")
    assert not (tmp_path / "live.yaml").exists()
