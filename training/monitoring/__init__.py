"""Live model quality: rolling metrics, feature drift, and alerts that fire once per episode.

- :mod:`~training.monitoring.live` — the metrics of the served predictions, with confidence bounds;
- :mod:`~training.monitoring.drift` — PSI of live features against the training reference;
- :mod:`~training.monitoring.significance` — the tests that keep small samples from alerting;
- :mod:`~training.monitoring.alerts` — conditions, episodes, log and webhook notifiers;
- :mod:`~training.monitoring.monitor` — one pass over all of them.
"""

from training.monitoring.alerts import (
    AlertEvent,
    AlertOutcome,
    Condition,
    Notifier,
    Thresholds,
    WebhookNotifier,
    evaluate,
    firing_alerts,
    log_notifier,
    make_notifier,
    update_alerts,
)
from training.monitoring.drift import (
    build_reference,
    drift_p_value,
    feature_drift,
    load_reference,
    psi,
    reference_histogram,
    reference_path,
    reference_rows,
    write_reference,
)
from training.monitoring.live import live_metrics
from training.monitoring.monitor import monitor

__all__ = [
    "AlertEvent",
    "AlertOutcome",
    "Condition",
    "Notifier",
    "Thresholds",
    "WebhookNotifier",
    "build_reference",
    "drift_p_value",
    "evaluate",
    "feature_drift",
    "firing_alerts",
    "live_metrics",
    "load_reference",
    "log_notifier",
    "make_notifier",
    "monitor",
    "psi",
    "reference_histogram",
    "reference_path",
    "reference_rows",
    "update_alerts",
    "write_reference",
]
