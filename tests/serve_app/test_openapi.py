"""The published OpenAPI document: built from the request schemas, served by the ingress, and
describing the answers the ingress really gives."""

from __future__ import annotations

from pathlib import Path

from conflict_core.schema import ALL_COLUMNS, REQUIRED_COLUMNS
from serve_app.openapi import Prediction, SyncEventIn, openapi_document
from serve_app.schemas import PredictItem
from tests.serve_app.ingress_harness import ingress_client

ITEM = {"user_id": "u1", "device_id": "d1", "entity_type": "task", "entity_id": "e1", "changed_fields": ["title"]}


def test_the_predict_item_schema_is_the_validating_model() -> None:
    document = openapi_document()
    assert document["components"]["schemas"]["PredictItem"] == PredictItem.model_json_schema(mode="validation")
    assert document["components"]["schemas"]["PredictItem"]["additionalProperties"] is False


def test_the_sync_event_schema_has_the_import_formats_columns() -> None:
    schema = openapi_document()["components"]["schemas"]["SyncEventIn"]
    assert set(schema["properties"]) == set(ALL_COLUMNS)
    assert set(schema["required"]) == set(REQUIRED_COLUMNS)
    assert set(SyncEventIn.model_fields) == set(ALL_COLUMNS)


def test_the_ingress_serves_it_with_its_own_limits_and_every_route(tmp_path: Path) -> None:
    with ingress_client(tmp_path, max_items_per_request=7) as (client, ingress, _):
        document = client.get("/openapi.json").json()
        assert document["openapi"].startswith("3.1")
        batch = document["components"]["schemas"]["PredictBatch"]["properties"]["items"]
        assert batch["maxItems"] == 7
        routes = {route.path for route in ingress.router.routes}
        assert routes == set(document["paths"])


def test_a_real_answer_matches_the_documented_prediction(tmp_path: Path) -> None:
    with ingress_client(tmp_path) as (client, _, _):
        single = client.post("/v1/predict", json=ITEM).json()
        Prediction.model_validate(single)
        many = client.post("/v1/predict", json={"items": [ITEM, ITEM]}).json()
        assert len(many["predictions"]) == 2
        for prediction in many["predictions"]:
            Prediction.model_validate(prediction)
