"""A co-edited document seen from HTTP: its text (the stored Yjs state with the log folded in)
and an edit that merges. `PUT .../content` on a co-edited document does not overwrite: the new
text becomes the smallest Yjs update from the current text (`collab.text_update`), appended to
the log like a socket's update, so HTTP and socket editors merge and socket editors see it.

HTTP edits of this process are made under one Yjs client id, drawn at start (a fresh id per edit
would grow every document's state vector by one entry an edit), and one document's edits here
are made one at a time (two at once under one id would reuse a clock). A failed append leaves
nothing behind: the next edit rebuilds its document from the stored state.
"""

from __future__ import annotations

import asyncio
import secrets

from shared.domain import collab
from shared.domain.accounts import Principal
from shared.store.update_log import AppendReply, AppendStatus, UpdateLog

# Yjs client ids are 32-bit; 0 and collab.SEED_CLIENT are never drawn here.
_CLIENT_MIN = 2


class CoEditing:
    def __init__(self, updates: UpdateLog, max_entries: int) -> None:
        self._updates = updates
        self._max_entries = max_entries
        self._client_id = secrets.randbelow(2**32 - _CLIENT_MIN) + _CLIENT_MIN
        # The origin of HTTP edits on the relay: not this process's socket origin, so this
        # process relays them to its own sockets too (services/api/rooms.py skips its own).
        self.origin = f"http:{secrets.token_hex(4)}"
        # One lock per document being edited here, kept while anyone holds or awaits it.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def text(self, doc_id: str) -> str | None:
        """The document's current text; None when Redis does not hold it."""
        snapshot = await self._updates.read(doc_id, self._max_entries)
        if snapshot.version is None or snapshot.state is None:
            return None
        return collab.fold(snapshot.state, [u for _, u in snapshot.log]).text

    async def edit(
        self, who: Principal, doc_id: str, content: str, base_version: int | None, now_ms: int
    ) -> AppendReply | None:
        """Append the update from the current text to `content`; None when Redis does not hold
        the document (or it is not seeded): load it, then try again."""
        lock, users = self._locks.get(doc_id, (asyncio.Lock(), 0))
        self._locks[doc_id] = (lock, users + 1)
        try:
            async with lock:
                snapshot = await self._updates.read(doc_id, self._max_entries)
                if snapshot.version is None or snapshot.state is None:
                    return None
                if base_version is not None and base_version != snapshot.version:
                    # Stale already: no diff to build (the append would refuse it anyway).
                    return AppendReply(AppendStatus.STALE, snapshot.version, "")
                state = collab.merged([snapshot.state, *(u for _, u in snapshot.log)])
                doc, text = collab.new_doc(state, client_id=self._client_id)
                update = collab.text_update(doc, text, content)
                return await self._updates.append(
                    doc_id,
                    update,
                    self.origin,
                    who.user_id,
                    now_ms,
                    who.grants,
                    base_version=base_version,
                )
        finally:
            lock, users = self._locks[doc_id]
            if users == 1:
                del self._locks[doc_id]
            else:
                self._locks[doc_id] = (lock, users - 1)
