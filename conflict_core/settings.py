"""One settings object for the whole product.

Values come, highest priority first, from keyword arguments, environment variables
(``CONFLICT_*``; the database URL also from ``DATABASE_URL``), and an optional YAML file
named by ``CONFLICT_CONFIG``. Unknown keys in the file or in keyword arguments are errors.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from conflict_core.decision import DecisionCosts, DecisionThresholds

DEFAULT_DATA_DIR = Path("data")
_PLACEHOLDER_WORDS = ("changeme", "change-me", "change_me", "secret", "example", "placeholder", "xxxx", "password")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CONFLICT_",
        extra="forbid",
        validate_default=True,
        populate_by_name=True,
    )

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_DATA_DIR / 'conflicts.db'}",
        validation_alias=AliasChoices("DATABASE_URL", "CONFLICT_DATABASE_URL", "database_url"),
        description="SQLAlchemy URL of the sync event store.",
    )
    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="Root of exported events, features and artifacts.")
    ray_address: str | None = Field(
        default=None, description="Ray cluster address; None starts or joins a local instance."
    )
    serve_config_template: Path = Field(
        default=Path("serve_config.yaml"),
        description="The committed Serve config: what `serve deploy` and conflictctl start from. Never written.",
    )
    serve_config_path: Path = Field(
        default_factory=lambda data: Path(data["data_dir"]) / "serve_config.yaml",
        description="The live Serve config, holding the active model in ModelInference's user_config: what "
        "activation writes and the running app is deployed from. Created from the template when first "
        "needed. Default: <data_dir>/serve_config.yaml.",
    )
    serve_url: str = Field(default="http://127.0.0.1:8000", description="Base URL of the running prediction app.")
    serve_ingress_mode: Literal["haproxy", "throughput", "default"] = Field(
        default="haproxy",
        description="Ray Serve's HTTP path when conflictctl starts Ray: Ray's bundled HAProxy (fastest; "
        "its listeners moved onto 127.0.0.1 by the conflict-haproxy launcher), throughput-optimized "
        "behind the Python proxy, or the default Python proxy.",
    )
    dashboard_url: str = Field(
        default="http://127.0.0.1:8265", description="Ray dashboard, for Serve deploys and job submission."
    )

    # Access control (see conflict_core.tokens).
    access_control_enabled: bool = Field(
        default=True, description="Require a scoped bearer token on every route but health and readiness."
    )
    token_cache_ttl_s: float = Field(
        default=5.0, gt=0, le=300, description="How long a replica trusts a verified token; bounds revocation delay."
    )
    api_token: SecretStr | None = Field(
        default=None, description="The bearer token conflictctl's own clients (predict, traffic, replay) send."
    )
    console_session_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs console session cookies (32+ characters, random); none: a random key per "
        "console process, so sessions end when it restarts.",
    )
    console_session_max_age_s: int = Field(default=8 * 3600, gt=0)

    # Risk bands of the heuristics (and of models trained before cost-aware thresholds).
    risk_medium_threshold: float = Field(default=0.2, gt=0, lt=1)
    risk_high_threshold: float = Field(default=0.5, gt=0, lt=1)

    # What the recommendations weigh: each model's sync_now / fetch_first / warn_user thresholds
    # minimise the expected cost per decision on its calibrated probabilities (conflict_core.decision).
    cost_manual_resolution: float = Field(default=10.0, gt=0, description="A conflict a person resolves by hand.")
    cost_extra_fetch: float = Field(default=0.5, ge=0, description="One extra fetch before a sync.")
    cost_user_interruption: float = Field(default=2.0, ge=0, description="Interrupting the user with a warning.")
    fetch_first_avoids_fraction: float = Field(
        default=0.6, ge=0, le=1, description="Share of conflicts a fetch before the sync avoids."
    )

    # Training and the activation gate.
    training_days_back: int = Field(default=90, gt=0)
    min_training_samples: int = Field(default=100, gt=0)
    min_training_positives: int = Field(default=20, gt=0)
    gate_min_relative_improvement: float = Field(default=0.05, ge=0)
    gate_quality_floor_roc_auc: float = Field(default=0.75, ge=0.5, le=1.0)
    sweep_num_samples: int = Field(default=12, gt=0)
    job_task_cpus: float = Field(
        default=1.0,
        gt=0,
        le=64,
        description="Logical CPUs each extraction task and sweep trial reserves on Ray; below 1 lets the "
        "jobs share a small machine with a running Serve app.",
    )

    # Serving.
    max_items_per_request: int = Field(default=500, gt=0)
    max_request_bytes: int = Field(default=2_000_000, gt=0)

    # Lifecycle.
    outcome_min_age_hours: float = Field(default=24.0, ge=0)
    outcome_max_age_hours: float = Field(default=30.0, gt=0)
    accuracy_alert_threshold: float = Field(default=0.70, ge=0, le=1)
    alert_min_labelled: int = Field(default=100, gt=0)
    psi_alert_threshold: float = Field(default=0.2, gt=0)
    alert_significance: float = Field(
        default=0.01,
        gt=0,
        lt=0.5,
        description="An alert fires only when its figure is past the limit with 1 - this confidence "
        "(one-sided), so that small samples do not raise false alarms.",
    )
    alert_webhook_url: str | None = None
    training_data_retention_days: int = Field(default=30, gt=0)

    # Rollout of a new version (conflict_core.rollout, training.rollout_decisions).
    retrain_rollout_mode: Literal["shadow", "canary", "activate"] = Field(
        default="shadow",
        description="What the weekly retrain does with a version that passes the gate while a model is "
        "active: put it in shadow, in canary (rollout_canary_percent), or activate it outright.",
    )
    rollout_canary_percent: float = Field(default=10.0, gt=0, lt=100, description="Default canary share of users.")
    rollout_min_labelled: int = Field(
        default=200, gt=0, description="Labelled live outcomes each variant needs before a promotion is judged."
    )
    rollout_min_positives: int = Field(
        default=10, gt=0, description="Conflicts among those outcomes each variant needs (PR-AUC needs both classes)."
    )
    rollout_margin: float | None = Field(
        default=None,
        ge=0,
        description="Relative live PR-AUC improvement a challenger needs over the champion; None: the "
        "activation gate's margin (gate_min_relative_improvement).",
    )
    rollout_bootstrap_resamples: int = Field(default=1000, ge=100)
    rollout_confidence: float = Field(default=0.95, gt=0.5, lt=1)
    rollout_abort_after_hours: float = Field(
        default=14 * 24.0, gt=0, description="A challenger not promoted this long after its rollout began is aborted."
    )
    rollback_max_relative_drop: float = Field(
        default=0.10,
        gt=0,
        lt=1,
        description="Roll back when the active model's live accuracy or PR-AUC falls more than this below "
        "its holdout value (or the previous version's live value) ...",
    )
    rollback_window_hours: float = Field(default=24.0, gt=0, description="... within this long of its activation.")
    rollback_min_labelled: int = Field(
        default=100, gt=0, description="Labelled outcomes of the active model before a rollback is judged."
    )

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError(f"expected a sqlite:// or postgresql:// URL, got {value!r}")
        return absolute_database_url(value)

    def decision_costs(self) -> DecisionCosts:
        return DecisionCosts(
            manual_resolution=self.cost_manual_resolution,
            extra_fetch=self.cost_extra_fetch,
            user_interruption=self.cost_user_interruption,
            fetch_avoids_fraction=self.fetch_first_avoids_fraction,
        )

    def fixed_thresholds(self) -> DecisionThresholds:
        """The heuristics' bands (``risk_medium_threshold`` / ``risk_high_threshold``)."""
        return DecisionThresholds(self.risk_medium_threshold, self.risk_high_threshold, "fixed")

    @field_validator("console_session_secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value()
        if len(secret) < 32:
            raise ValueError(f"console_session_secret must be at least 32 characters, got {len(secret)}")
        lowered = secret.lower()
        if any(word in lowered for word in _PLACEHOLDER_WORDS) or len(set(secret)) < 10:
            raise ValueError("console_session_secret looks like a placeholder; generate one: openssl rand -hex 32")
        return value

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> Settings:
        if not self.risk_medium_threshold < self.risk_high_threshold:
            raise ValueError(
                "risk_medium_threshold must be below risk_high_threshold, got "
                f"{self.risk_medium_threshold} >= {self.risk_high_threshold}"
            )
        if not self.outcome_min_age_hours < self.outcome_max_age_hours:
            raise ValueError("outcome_min_age_hours must be below outcome_max_age_hours")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        import os

        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("CONFLICT_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"CONFLICT_CONFIG names {config_file!r}, which is not a file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    # Derived locations, all under data_dir so that one setting moves everything.
    @property
    def events_dir(self) -> Path:
        return self.data_dir / "events"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def log_spool_dir(self) -> Path:
        return self.data_dir / "prediction_log_spool"

    @property
    def rollout_relative_margin(self) -> float:
        """The promotion margin: ``rollout_margin``, or the activation gate's when unset."""
        return self.gate_min_relative_improvement if self.rollout_margin is None else self.rollout_margin

    def public_dict(self) -> dict[str, Any]:
        """Settings as plain values, for logs and job summaries."""
        return self.model_dump(mode="json")


def absolute_database_url(url: str) -> str:
    """``url`` as every process can use it: a relative SQLite path made absolute (it means
    "relative to where the settings were made"; Ray Jobs and replicas run elsewhere), and
    PostgreSQL on the installed psycopg 3 driver, so SQLAlchemy does not look for psycopg2."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        parsed = parsed.set(database=str(Path(parsed.database).resolve()))
    elif parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built once on first use (never at import time)."""
    return Settings()
