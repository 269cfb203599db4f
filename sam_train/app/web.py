"""HTTP routes of the `sam-app` page (FastAPI): the page, the image list, uploads, masks."""

from __future__ import annotations

import io

from fastapi import FastAPI, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel

from sam_train.app.server import STATIC, PageError, Prompt, SegmentService


class SegmentRequest(BaseModel):
    image: str | None = None
    points: list[list[float]] = []
    labels: list[int] = []
    box: list[float] | None = None


def create_app(service: SegmentService) -> FastAPI:
    """The app serving `service`; errors the page can cause answer {"error": one line}."""
    app = FastAPI(title="sam-app", docs_url=None, redoc_url=None)

    @app.exception_handler(PageError)
    async def page_error(_, err: PageError) -> JSONResponse:
        status = 503 if service.model is None else 400
        return JSONResponse({"error": str(err)}, status_code=status)

    @app.exception_handler(Exception)
    async def unexpected(_, err: Exception) -> JSONResponse:  # never a stack trace on the page
        return JSONResponse({"error": f"the server failed: {type(err).__name__}: {err}"}, 500)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info() -> dict:
        return {
            "checkpoint": service.checkpoint,
            "error": service.load_error,
            "images": service.images.names(),
            "image_size": None if service.model is None else service.model.image_encoder.img_size,
        }

    @app.get("/api/images/{image_id}")
    def image(image_id: str) -> Response:
        buf = io.BytesIO()
        Image.fromarray(service.images.get(image_id)).save(buf, format="PNG", compress_level=1)
        return Response(buf.getvalue(), media_type="image/png")

    @app.post("/api/upload")
    async def upload(file: UploadFile) -> dict:
        image_id = service.images.add(await file.read(), file.filename or "upload")
        h, w = service.images.get(image_id).shape[:2]
        return {"id": image_id, "width": w, "height": h}

    @app.post("/api/embed/{image_id}")
    def embed(image_id: str) -> dict:
        _, ms = service.predictor(image_id)
        return {"id": image_id, "embed_ms": ms}

    @app.post("/api/segment")
    def segment(request: SegmentRequest) -> dict:
        if not request.image:
            raise PageError("pick or upload an image first")
        prompt = Prompt(request.points, request.labels, request.box)
        return service.segment(request.image, prompt)

    return app
