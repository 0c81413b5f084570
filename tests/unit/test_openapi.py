"""The OpenAPI document describes the fast API's bodies: every /api/v1 operation answers a
schema (but 204s), and every one that takes a JSON body or query parameters declares them."""
from __future__ import annotations

WITH_BODY = {("post", "/api/v1/studies/{study}/series/{series}/mini-ct"),
             ("post", "/api/v1/shares"), ("post", "/api/v1/signed-urls"), ("post", "/api/v1/admin/jobs/retry"),
             ("post", "/api/v1/admin/forwards/retry"), ("post", "/api/v1/uploads"), ("post", "/api/v1/projects"),
             ("patch", "/api/v1/projects/{project_id}"), ("post", "/api/v1/annotations"),
             ("put", "/api/v1/annotations/{annotation_id}"), ("post", "/api/v1/annotations/{annotation_id}/mask-groups"),
             ("post", "/api/v1/annotations/{annotation_id}/mask-groups/{group_id}/signed-url"),
             ("post", "/api/v1/annotations/{annotation_id}/mask-groups/{group_id}/complete"),
             ("put", "/api/v1/metadata/{study}/{series}/{instance}/{variant}"),
             ("patch", "/api/v1/metadata/{study}/{series}/{instance}/{variant}/viewer-state"),
             ("put", "/api/v1/metadata/{study}/{series}/{instance}/{variant}/annotations")}
# GETs that take no query parameters: the caller's own record, an annotation's few mask groups, a mask's PNG.
NO_QUERY = {("get", "/api/v1/me"), ("get", "/api/v1/annotations/{annotation_id}/mask-groups"),
            ("get", "/api/v1/annotations/{annotation_id}/mask-groups/{group_id}/masks/{mask_id}/content"),
            ("get", "/api/v1/studies/{study}/series/{series}/preview/status"),
            ("get", "/api/v1/studies/{study}/series/{series}/preview/events")}
# Bodies that are not JSON: (method, path) → media type.
OTHER_MEDIA = {("put", "/api/v1/uploads/{upload_id}/archive"): "application/zip",
               ("get", "/api/v1/uploads/{upload_id}/events"): "text/event-stream",
               ("get", "/api/v1/studies/{study}/archive"): "application/zip",
               ("get", "/api/v1/studies/{study}/series/{series}/archive"): "application/zip",
               ("get", "/api/v1/studies/{study}/series/{series}/preview"): "application/vnd.dental-gateway.preview",
               ("get", "/api/v1/studies/{study}/series/{series}/preview/v/{version}"):
                   "application/vnd.dental-gateway.preview",
               ("get", "/api/v1/studies/{study}/series/{series}/preview/events"): "text/event-stream",
               ("get", "/api/v1/studies/{study}/series/{series}/thumbnail"): "image/jpeg",
               ("get", "/api/v1/studies/{study}/series/{series}/thumbnail/v/{version}"): "image/jpeg",
               ("get", "/api/v1/studies/{study}/series/{series}/snapshot"): "image/png",
               ("get", "/api/v1/studies/{study}/series/{series}/snapshot/v/{version}"): "image/png",
               ("put", "/api/v1/blob-uploads/{key}"): "image/png",
               ("get", "/api/v1/annotations/{annotation_id}/mask-groups/{group_id}/masks/{mask_id}/content"):
                   "image/png"}


def test_every_api_operation_has_schemas(client):
    doc = client.get("/api/openapi.json").get_json()
    operations = {(method, path): op for path, ops in doc["paths"].items() if path.startswith("/api/v1/")
                  for method, op in ops.items() if method != "parameters"}
    assert len(operations) >= 11
    for (method, path), op in operations.items():
        success = {code: r for code, r in op["responses"].items() if code.startswith("2")}
        assert success, (method, path)
        for code, response in success.items():
            if code != "204" and (method, path) not in OTHER_MEDIA:
                assert "schema" in response["content"]["application/json"], (method, path, code)
        if (method, path) in OTHER_MEDIA:
            media = OTHER_MEDIA[method, path]
            assert media in (op.get("requestBody", {}).get("content", {}) if method == "put"
                             else op["responses"]["200"]["content"]), (method, path)
        if (method, path) in WITH_BODY:
            assert "schema" in op["requestBody"]["content"]["application/json"], (method, path)
        if method == "get" and not path.endswith("}") and (method, path) not in NO_QUERY:
            assert op.get("parameters"), (method, path)


def test_a_body_that_does_not_fit_names_the_field(client, auth):
    response = client.post("/api/v1/shares", headers=auth.headers(roles=["doctor"]),
                           json={"study": "1.2", "targets": "everyone", "colour": "red"})
    assert response.status_code == 400
    body = response.get_json()
    assert "targets" in body["message"] and "colour" in body["message"], body
    assert set(body["errors"]["fields"]["json"]) == {"targets", "colour"}


def test_the_document_validates_and_declares_bearer_auth(client):
    from openapi_spec_validator import validate

    doc = client.get("/api/openapi.json").get_json()
    validate(doc)  # raises with the path of the first error
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "a token of the configured provider, e.g. from `gateway token`"}
    assert doc["security"] == [{"bearer": []}]


def test_the_docs_page_loads_swagger_ui_from_the_gateway_itself(client):
    page = client.get("/api/docs").get_data(as_text=True)
    assert "cdn" not in page.lower() and "https://" not in page
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        assert f'/api/docs/assets/{asset}"' in page, page
        response = client.get(f"/api/docs/assets/{asset}")  # public, like the page
        assert response.status_code == 200 and len(response.data) > 10_000, asset
