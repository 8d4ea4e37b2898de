"""A rollout challenger trained with other feature parameters than the champion is scored on
features computed with its own (no Ray: the real FeatureLookup and Variants, a stand-in handle)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import numpy as np

from conflict_core.features import FeatureParams
from serve_app.deployments import FeatureLookup, _challenger_input
from serve_app.inference import Variants
from tests.serve_app.ingress_harness import Method
from tests.serve_app.sync_history import events, store_with
from tests.serve_app.test_feature_lookup import SLOW_TEMPO, _from_store, _items
from tests.serve_app.test_variants import artifact


class VariantsInference:
    """ModelInference's ``predict`` for one request at a time, over real :class:`Variants`."""

    def __init__(self, variants: Variants) -> None:
        self.variants = variants
        self.requests: list[tuple[Any, ...]] = []
        self.predict = Method(self._predict)

    def _predict(self, request: tuple[Any, ...]) -> dict[str, Any]:
        self.requests.append(request)
        return self.variants.predict(request[0], request[1], _challenger_input([request]))


def test_the_lookup_sends_a_challenger_features_computed_with_its_own_parameters(
    sqlite_url: str, tmp_path: Path
) -> None:
    store_with(sqlite_url, events(500, span_days=60))
    champion, challenger = artifact(tmp_path, "v1", 1.0), artifact(tmp_path, "v_slow", -1.0, SLOW_TEMPO)
    variants = Variants()
    variants.configure({**champion, "challenger": {**challenger, "mode": "shadow"}})
    inference = VariantsInference(variants)
    lookup_class: Any = cast(Any, FeatureLookup).func_or_class
    lookup = lookup_class(sqlite_url, refresh_interval_s=0.0, inference=inference, inference_timeout_s=5.0)
    items = _items(30, seed=3)
    lookback_before = lookup.core.window.lookback
    try:
        first = asyncio.run(lookup._score([items[:20], items[20:]]))  # one batch of two calls
        second = asyncio.run(lookup._score([items]))
    finally:
        lookup.core.close()

    # The first batch learns the challenger's parameters and is scored again with its features.
    assert len(inference.requests) == 3 and inference.requests[0][2] is None
    assert lookup.challenger_params == SLOW_TEMPO
    assert lookup.core.window.lookback == SLOW_TEMPO.lookback.to_pytimedelta() > lookback_before
    own = _from_store(sqlite_url, items, SLOW_TEMPO)
    champions = _from_store(sqlite_url, items)
    assert not np.allclose(own, champions)  # the parameters matter for these rows
    for request in inference.requests[1:]:
        np.testing.assert_allclose(request[2].matrix, own, rtol=0, atol=1e-12)
        np.testing.assert_allclose(request[0], champions, rtol=0, atol=1e-12)
    # The challenger's shadow scores are those of its own features, split back per request.
    alone = Variants()
    alone.configure(challenger)
    expected = alone.predict(own)["probabilities"]
    np.testing.assert_allclose(np.concatenate([p["shadow_probabilities"] for p in first]), expected)
    np.testing.assert_allclose(second[0]["shadow_probabilities"], expected)
    assert all(p["challenger_version"] == "v_slow" for p in [*first, *second])
    assert lookup.core.params == FeatureParams()  # the champion's features stay the default ones
