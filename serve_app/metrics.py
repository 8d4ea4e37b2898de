"""Custom Serve metrics (``ray.util.metrics``), exported on the Ray Prometheus endpoint."""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge, Histogram

_LATENCY_MS: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000]
_BATCH: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]


class ServeMetrics:
    """The metrics one replica reports; created in a replica's ``__init__``, never at import."""

    def __init__(self) -> None:
        self.predictions = Counter(
            "conflict_predictions_total",
            description="Predictions served, by model version, risk level and rollout variant "
            "(champion, challenger, or heuristic for the fallback).",
            tag_keys=("model_version", "risk_level", "variant"),
        )
        self.shadow_predictions = Counter(
            "conflict_shadow_predictions_total",
            description="Rows a shadow challenger scored beside the champion (logged, never returned).",
            tag_keys=("model_version",),
        )
        self.rollout_percent = Gauge(
            "conflict_rollout_challenger_percent",
            description="The challenger's canary share of users in percent (0 in shadow; -1 once it left).",
            tag_keys=("model_version", "mode"),
        )
        self.live_metric = Gauge(
            "conflict_live_model_metric",
            description="Live quality of each variant over the matured outcome window (from the last "
            "outcome-tracking run): accuracy, pr_auc, roc_auc, brier, labelled.",
            tag_keys=("variant", "model_version", "metric"),
        )
        self.fallbacks = Counter(
            "conflict_fallbacks_total",
            description="Predictions answered by the heuristics, by reason.",
            tag_keys=("reason",),
        )
        self.lookup_latency = Histogram(
            "conflict_feature_lookup_latency_ms",
            description="Feature lookup time per batch (store query and features).",
            boundaries=_LATENCY_MS,
        )
        self.inference_latency = Histogram(
            "conflict_inference_latency_ms",
            description="predict_proba time per batch, by rollout (none, shadow: both models scored, "
            "canary: the challenger's rows scored by it).",
            boundaries=_LATENCY_MS,
            tag_keys=("rollout",),
        )
        self.batch_size = Histogram(
            "conflict_batch_size",
            description="Calls per batch, by deployment.",
            boundaries=_BATCH,
            tag_keys=("deployment",),
        )
        self.batch_items = Histogram(
            "conflict_batch_items",
            description="Items per batch, by deployment.",
            boundaries=_BATCH,
            tag_keys=("deployment",),
        )
        self.log_buffer_depth = Gauge(
            "conflict_prediction_log_buffer_depth",
            description="Prediction records not yet in the store, where=memory (buffered) or disk (spooled).",
            tag_keys=("where",),
        )
        self.log_dropped = Gauge(
            "conflict_prediction_log_dropped",
            description="Prediction records this replica gave up: store down, spool unwritable, memory bound reached.",
        )
