// /v1/ws/events on the matcher: a document's `document.edited {version}` and
// `document.saved {version}` move the status the moment they happen. While the socket is down
// the document view polls GET …/status instead, so the status never rests on a dead socket.

export function matcherBase (config) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws'
  return `${scheme}://${location.hostname}:${config.matcher_port}`
}

export class Events {
  constructor (config, token, handlers) {
    this.url = `${matcherBase(config)}/v1/ws/events`
    this.token = token
    this.handlers = handlers
    this.docs = new Map() // document id -> last stream id seen (resubscribe with `since`)
    this.ws = null
    this.open = false
    this.stopped = false
    this.failures = 0
    this.connect()
  }

  connect () {
    if (this.stopped || !navigator.onLine) return
    const ws = new WebSocket(this.url, ['bearer', this.token])
    this.ws = ws
    ws.onopen = () => {
      this.open = true
      this.failures = 0
      this.handlers.state?.(true)
      for (const [id, since] of this.docs) this.send({ type: 'subscribe', document_id: id, since: since || undefined })
    }
    ws.onmessage = (e) => this.receive(JSON.parse(e.data))
    ws.onclose = (e) => {
      if (this.ws !== ws) return
      this.open = false
      this.ws = null
      this.handlers.state?.(false)
      if (e.code === 1008 && /session|logged out/i.test(e.reason)) {
        this.handlers.sessionEnded?.()
        return
      }
      this.failures++
      setTimeout(() => this.connect(), Math.min(500 * 2 ** this.failures, 10000))
    }
    this.ping = this.ping || setInterval(() => this.open && this.send({ type: 'ping' }), 60000)
    this.onOnline = this.onOnline || (() => { if (!this.ws) this.connect() })
    window.addEventListener('online', this.onOnline)
  }

  send (msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg))
  }

  receive (msg) {
    if (msg.type === 'event') {
      if (msg.stream === 'doc' && msg.document_id) this.docs.set(msg.document_id, msg.id)
      this.handlers.event?.(msg)
    } else if (msg.type === 'reset') {
      this.handlers.reset?.(msg.document_id)
    } else if (msg.type === 'subscribed') {
      if (!this.docs.get(msg.document_id)) this.docs.set(msg.document_id, msg.last_id)
      this.handlers.subscribed?.(msg.document_id)
    } else if (msg.type === 'error') {
      this.handlers.error?.(msg.detail)
    }
  }

  follow (docId) {
    if (!this.docs.has(docId)) this.docs.set(docId, null)
    this.send({ type: 'subscribe', document_id: docId })
  }

  unfollow (docId) {
    this.docs.delete(docId)
    this.send({ type: 'unsubscribe', document_id: docId })
  }

  close () {
    this.stopped = true
    clearInterval(this.ping)
    window.removeEventListener('online', this.onOnline)
    if (this.ws) {
      const ws = this.ws
      this.ws = null
      ws.close(1000)
    }
  }
}
