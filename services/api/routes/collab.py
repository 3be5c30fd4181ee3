"""The co-editing socket's route (services/api/collab.py serves it)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from services.api.resources import Resources

router = APIRouter(tags=["collab"])


@router.websocket("/v1/collab/{document_id}")
async def collab(ws: WebSocket, document_id: str) -> None:
    res: Resources = ws.app.state.resources
    await res.collab.serve(ws, document_id)
