// The editor: CodeMirror 6, bound to the document through /v1/collab/{id} (y-websocket protocol)
// when co-editing is on, otherwise autosaving over HTTP. Either way it reports whether every local
// edit has reached the server (`pending`) and whether it is connected; the document view turns
// that, with the version and saved_version, into the status a person reads.
import { basicSetup, EditorView } from 'codemirror'
import { EditorState } from '@codemirror/state'
import * as decoding from 'lib0/decoding'
import { yCollab } from 'y-codemirror.next'
import { WebsocketProvider } from 'y-websocket'
import * as Y from 'yjs'
import { api, ApiError } from './api.js'

const SYNC = 0
const STEP2 = 1
const UPDATE = 2

// The Yjs update inside a sync frame (step 2 or update), with its kind; null for anything else.
function syncUpdate (bytes) {
  try {
    const d = decoding.createDecoder(bytes)
    if (decoding.readVarUint(d) !== SYNC) return null
    const kind = decoding.readVarUint(d)
    if (kind !== STEP2 && kind !== UPDATE) return null
    return { kind, update: decoding.readVarUint8Array(d) }
  } catch {
    return null
  }
}

const isEmpty = (u) => u.length <= 2 && u.every((b) => b === 0)
const keyOf = (u) => u.join(',')

// Which local updates the server has not stored yet. The server relays an update, to its sender
// too, only once the append script stored it (docs/collab.md): the echo of a frame we sent is
// its acknowledgement. Edits made while disconnected are never sent as frames (y-websocket drops
// them); the step 2 we answer the server's step 1 with on every (re)connect carries everything
// the server lacks, so it replaces whatever was outstanding.
class Acks {
  constructor () {
    this.outstanding = new Map()
    this.unsent = false
  }

  get pending () { return this.unsent || this.outstanding.size > 0 }

  sent ({ kind, update }) {
    if (kind === STEP2) {
      this.outstanding.clear()
      this.unsent = false
    }
    if (isEmpty(update)) return // the server stores nothing for it, and says nothing
    const k = keyOf(update)
    this.outstanding.set(k, (this.outstanding.get(k) || 0) + 1)
  }

  received ({ update }) {
    const k = keyOf(update)
    const n = this.outstanding.get(k)
    if (n === undefined) return
    if (n <= 1) this.outstanding.delete(k)
    else this.outstanding.set(k, n - 1)
  }
}

function view (parent, text, extensions) {
  return new EditorView({
    parent,
    state: EditorState.create({
      doc: text,
      extensions: [
        basicSetup,
        EditorView.lineWrapping,
        EditorView.contentAttributes.of({ 'aria-label': 'Document text' }),
        ...extensions
      ]
    })
  })
}

// Remote cursors show their person's name all the time, not only on hover (the first line
// gets room above it for the label).
const namedCursors = EditorView.theme({
  '.cm-content': { paddingTop: '1.1em' },
  '.cm-ySelectionInfo': { opacity: 1, fontFamily: 'system-ui, sans-serif', borderRadius: '3px 3px 3px 0' },
  '.cm-ySelectionCaretDot': { display: 'none' }
})

/** Co-editing over /v1/collab/{id}. `on.sync({connected, everConnected, pending})`,
 * `on.people([{name, color, me}])`, `on.closed(reason)` (the server ended it for good). */
export function collabEditor ({ parent, docId, token, me, on }) {
  const doc = new Y.Doc()
  const ytext = doc.getText('content')
  const acks = new Acks()
  let everConnected = false
  let refusedInARow = 0

  // Connected means synced: between the socket's open and the server's sync step 2 the editor
  // does not hold the document yet, and "Saved" then would show over an empty page.
  const report = () => on.sync({ connected: provider.wsconnected && provider.synced, everConnected, pending: acks.pending })

  // y-websocket lets us pass the WebSocket class: ours watches what goes out and what comes back.
  class TrackedSocket extends WebSocket {
    constructor (url, protocols) {
      super(url, protocols)
      let opened = false
      this.addEventListener('open', () => { opened = true; refusedInARow = 0 })
      this.addEventListener('message', (e) => {
        const msg = syncUpdate(new Uint8Array(e.data))
        if (msg) {
          acks.received(msg)
          queueMicrotask(report)
        }
      })
      this.addEventListener('close', (e) => {
        // A handshake the server refused (404, 403, 401) closes before opening, as 1006.
        if (!opened) refusedInARow++
        if (refusedInARow === 4) on.trouble('The co-editing connection keeps being refused. Reload the page; if it persists, the document may be gone.')
      })
    }

    send (data) {
      const msg = syncUpdate(data instanceof Uint8Array ? data : new Uint8Array(data))
      if (msg) acks.sent(msg)
      super.send(data)
      if (msg) queueMicrotask(report)
    }
  }

  const wsBase = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/collab`
  const provider = new WebsocketProvider(wsBase, docId, doc, {
    connect: navigator.onLine,
    // Browsers cannot set Authorization on a WebSocket: the token rides the subprotocol.
    protocols: ['bearer', token],
    WebSocketPolyfill: TrackedSocket,
    disableBc: true,
    // 1008: deleted, access revoked, logged out: reconnecting cannot help. Except a socket cut
    // for falling behind ("too slow to keep up: reconnect to resync"): a new one resyncs, and
    // giving up would drop the edits it has not sent.
    shouldReconnect: (event) => event.code !== 1008 || /reconnect/i.test(event.reason)
  })
  provider.on('closed', (event) => on.closed(event.reason || 'The server closed the document.'))
  provider.on('status', report)
  provider.on('sync', (synced) => {
    if (synced) everConnected = true
    report()
  })
  doc.on('update', (_update, origin) => {
    if (origin !== provider && !provider.wsconnected) acks.unsent = true
    report()
  })

  const awareness = provider.awareness
  awareness.setLocalStateField('user', { name: me.username, id: me.user_id, ...me.colour })
  awareness.on('change', ({ added }) => {
    // The server does not store awareness yet: someone who joins after us learns our cursor only
    // from our next frame. Saying it again when we see a newcomer makes that frame now.
    if (added.some((id) => id !== doc.clientID)) awareness.setLocalState({ ...awareness.getLocalState() })
    const people = new Map()
    for (const [id, state] of awareness.getStates()) {
      if (!state.user) continue
      const key = state.user.id || state.user.name
      const mine = id === doc.clientID
      if (!people.has(key) || mine) people.set(key, { name: state.user.name, color: state.user.color, me: mine || people.get(key)?.me })
    }
    on.people([...people.values()])
  })

  const offline = () => { provider.disconnect(); report() }
  const online = () => { provider.connect(); report() }
  window.addEventListener('offline', offline)
  window.addEventListener('online', online)

  const cm = view(parent, '', [yCollab(ytext, awareness, { undoManager: new Y.UndoManager(ytext) }), namedCursors])
  report()
  return {
    view: cm,
    text: () => cm.state.doc.toString(),
    destroy () {
      window.removeEventListener('offline', offline)
      window.removeEventListener('online', online)
      cm.destroy()
      provider.destroy()
      doc.destroy()
    }
  }
}

/** Co-editing off: the same editor, autosaving the whole text with PUT …/content. */
export function httpEditor ({ parent, docId, text, on }) {
  let inFlight = false
  let dirty = false
  let timer = null
  let connected = navigator.onLine
  const report = () => on.sync({ connected, everConnected: true, pending: dirty || inFlight })

  async function save () {
    timer = null
    if (inFlight || !dirty) return
    inFlight = true
    dirty = false
    const content = cm.state.doc.toString()
    try {
      const out = await api('PUT', `/documents/${docId}/content`, { content }, 'This document')
      connected = true
      on.saved?.(out)
    } catch (err) {
      dirty = true
      if (err instanceof ApiError && err.status !== 0 && err.status !== 503 && err.status !== 429) {
        on.trouble(err.message)
      } else {
        connected = err.status !== 0
      }
      timer = setTimeout(save, (err.retryAfter || 2) * 1000)
    } finally {
      inFlight = false
      report()
      if (dirty && !timer) timer = setTimeout(save, 250)
    }
  }

  const cm = view(parent, text, [
    EditorView.updateListener.of((u) => {
      if (!u.docChanged) return
      dirty = true
      if (!timer) timer = setTimeout(save, 250)
      report()
    })
  ])
  const onOnline = () => { connected = true; save() }
  window.addEventListener('online', onOnline)
  report()
  return {
    view: cm,
    text: () => cm.state.doc.toString(),
    destroy () {
      window.removeEventListener('online', onOnline)
      if (timer) clearTimeout(timer)
      cm.destroy()
    }
  }
}
