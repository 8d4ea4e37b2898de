"""The typed application builder: ``serve run serve_app.app:build_app`` or ``serve_config.yaml``.

Arguments are a pydantic model (Serve validates the config's ``args`` against it); anything
left out comes from :class:`conflict_core.settings.Settings`, read once when the app is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve import Application, Deployment

from conflict_core.settings import Settings
from serve_app.batching import WaitPolicy


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    database_url: str | None = Field(default=None, description="Store URL; default from settings.")
    log_spool_dir: str | None = Field(
        default=None, description="Prediction-log spill directory; default from settings."
    )
    max_items_per_request: int | None = Field(default=None, gt=0)
    max_events_per_request: int = Field(default=5000, gt=0)
    max_request_bytes: int | None = Field(default=None, gt=0)
    risk_medium_threshold: float | None = Field(default=None, gt=0, lt=1)
    risk_high_threshold: float | None = Field(default=None, gt=0, lt=1)
    lookup_timeout_s: float = Field(default=2.0, gt=0)
    inference_timeout_s: float = Field(default=1.0, gt=0)
    feature_refresh_interval_s: float = Field(
        default=0.5, ge=0, description="How often FeatureLookup tails the store; 0: before every batch."
    )
    feature_max_staleness_s: float = Field(
        default=5.0, gt=0, description="Older in-memory history fails the lookup (heuristics answer)."
    )
    feature_window_margin_s: float = Field(
        default=6 * 3600.0,
        ge=0,
        description=(
            "History FeatureLookup keeps beyond the features' lookback: items asked about as of up"
            " to this long ago are answered from memory; older ones read the store."
        ),
    )
    log_batch_size: int = Field(default=1000, gt=0)
    log_flush_interval_s: float = Field(default=0.25, gt=0)
    log_max_buffer: int = Field(default=20_000, gt=0)
    log_spill_after_s: float = Field(
        default=1.0, ge=0, description="How long the store may be down before buffered records go to disk."
    )
    ingress_max_batch_size: int = Field(
        default=64, gt=0, description="Concurrent requests the ingress sends to FeatureLookup as one call."
    )
    ingress_batch_wait_timeout_s: float = Field(
        default=0.002,
        ge=0,
        description="How long the ingress waits for more requests to join a FeatureLookup call.",
    )
    ingress_max_concurrent_batches: int = Field(
        default=1,
        ge=1,
        description=(
            "FeatureLookup calls one ingress replica keeps in flight; requests arriving meanwhile"
            " wait and join the next call (under load the batches grow with the load)."
        ),
    )
    ingress_batch_wait_policy: WaitPolicy = Field(
        default="adaptive",
        description=(
            "When a FeatureLookup call skips the batching wait: fixed (never), when_idle (nothing in"
            " flight) or adaptive (recent requests found no company within the wait); serve_app.batching."
        ),
    )
    live_metrics_interval_s: float = Field(
        default=60.0, gt=0, description="How often the live per-variant quality gauges are re-read from the store."
    )

    @model_validator(mode="after")
    def _thresholds(self) -> AppArgs:
        medium, high = self.risk_medium_threshold, self.risk_high_threshold
        if medium is not None and high is not None and medium >= high:
            raise ValueError("risk_medium_threshold must be below risk_high_threshold")
        if self.feature_refresh_interval_s >= self.feature_max_staleness_s:
            raise ValueError("feature_refresh_interval_s must be below feature_max_staleness_s")
        return self

    def resolved(self, settings: Settings | None = None) -> ServingOptions:
        """These arguments with settings filling the gaps: what the deployments are built with."""
        overrides: dict[str, Any] = {
            k: v
            for k, v in {
                "database_url": self.database_url,
                "max_items_per_request": self.max_items_per_request,
                "max_request_bytes": self.max_request_bytes,
                "risk_medium_threshold": self.risk_medium_threshold,
                "risk_high_threshold": self.risk_high_threshold,
            }.items()
            if v is not None
        }
        settings = settings or Settings(**overrides)  # re-validates thresholds and the URL
        return ServingOptions(
            **self.model_dump(
                exclude={
                    "database_url",
                    "log_spool_dir",
                    "max_items_per_request",
                    "max_request_bytes",
                    "risk_medium_threshold",
                    "risk_high_threshold",
                }
            ),
            database_url=settings.database_url,  # absolute: replicas do not share the deploying shell's cwd
            log_spool_dir=str(self.log_spool_dir or settings.log_spool_dir.resolve()),
            max_items_per_request=settings.max_items_per_request,
            max_request_bytes=settings.max_request_bytes,
            risk_medium_threshold=settings.risk_medium_threshold,
            risk_high_threshold=settings.risk_high_threshold,
            access_control_enabled=settings.access_control_enabled,
            token_cache_ttl_s=settings.token_cache_ttl_s,
        )


@dataclass(frozen=True)
class ServingOptions:
    """:class:`AppArgs` resolved against the settings: every value known."""

    database_url: str
    log_spool_dir: str
    max_items_per_request: int
    max_events_per_request: int
    max_request_bytes: int
    risk_medium_threshold: float
    risk_high_threshold: float
    lookup_timeout_s: float
    inference_timeout_s: float
    feature_refresh_interval_s: float
    feature_max_staleness_s: float
    feature_window_margin_s: float
    log_batch_size: int
    log_flush_interval_s: float
    log_max_buffer: int
    log_spill_after_s: float
    ingress_max_batch_size: int
    ingress_batch_wait_timeout_s: float
    ingress_max_concurrent_batches: int
    ingress_batch_wait_policy: WaitPolicy
    live_metrics_interval_s: float
    access_control_enabled: bool = True
    token_cache_ttl_s: float = 5.0


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """Ingress → FeatureLookup → ModelInference, with FallbackHeuristics beside them.

    The ingress coalesces concurrent requests into one FeatureLookup call, and FeatureLookup
    scores each batch with one ModelInference call, so a request costs one HTTP round trip
    and a share of two handle calls.

    Deployment options (replicas, CPUs, ``user_config``) come from ``serve_config.yaml``;
    ``args`` (the config's ``args``) are validated here, so a typo fails the deploy.
    """
    return build_graph(args if isinstance(args, AppArgs) else AppArgs.model_validate(args))


def build_graph(args: AppArgs, inference_user_config: dict[str, Any] | None = None) -> Application:
    """The graph, optionally with the inference ``user_config`` given in code (tests, bench)."""
    from serve_app import deployments, ingress

    # @serve.deployment makes these classes Deployments; Ray's type hints keep the class type.
    model_inference = cast(Deployment, deployments.ModelInference)
    feature_lookup = cast(Deployment, deployments.FeatureLookup)
    fallback_heuristics = cast(Deployment, deployments.FallbackHeuristics)
    ingress_deployment = cast(Deployment, ingress.Ingress)

    options = args.resolved()
    if inference_user_config is not None:
        model_inference = model_inference.options(user_config=inference_user_config)
    inference = model_inference.bind(database_url=options.database_url)
    lookup = feature_lookup.bind(
        database_url=options.database_url,
        refresh_interval_s=options.feature_refresh_interval_s,
        max_staleness_s=options.feature_max_staleness_s,
        inference=inference,
        lookup_timeout_s=options.lookup_timeout_s,
        inference_timeout_s=options.inference_timeout_s,
        window_margin_s=options.feature_window_margin_s,
    )
    fallback = fallback_heuristics.bind()
    return ingress_deployment.bind(lookup=lookup, inference=inference, fallback=fallback, options=options)
