// Find a partner over /v1/ws/match. The socket is opened only when the person asks: opening it
// puts them in the pool (with their profile's language and interests), where someone else's
// search may pick them.
import { api } from './api.js'
import { matcherBase } from './events.js'

export function slugs (text) {
  return [...new Set(text.split(',').map((s) => s.trim().toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '')).filter(Boolean))]
}

export class Matching {
  // on.state(kind, detail): 'connecting' | 'queued' | 'waiting' | 'matched' | 'rate_limited' |
  // 'cancelled' | 'error'; on.matched(frame).
  constructor (config, token, on) {
    this.config = config
    this.token = token
    this.on = on
    this.ws = null
    this.interests = []
    this.done = false
  }

  async find (interests, language) {
    this.interests = interests
    this.done = false
    this.on.state('connecting')
    // The pool entry takes the profile's language; the search's interests replace the profile's.
    await api('PATCH', '/users/me/profile', { language, interests }, 'Your profile')
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.search()
      return
    }
    const ws = new WebSocket(`${matcherBase(this.config)}/v1/ws/match`, ['bearer', this.token])
    this.ws = ws
    let opened = false
    ws.onopen = () => { opened = true }
    ws.onmessage = (e) => this.receive(JSON.parse(e.data))
    ws.onclose = (e) => {
      if (this.ws !== ws) return
      this.ws = null
      if (this.done) return
      if (!opened) this.on.state('error', 'The matcher refused the connection or cannot be reached. Try again in a moment.')
      else if (e.code === 1008) this.on.state('error', e.reason ? `The matcher closed the connection: ${e.reason}.` : 'Your session ended. Log in again.')
      else if (e.code === 1000 && /idle/.test(e.reason)) this.on.state('error', 'The search timed out. Press Find a partner again.')
      else this.on.state('error', 'The connection to the matcher was lost. Press Find a partner again.')
    }
    this.ping = setInterval(() => this.send({ type: 'ping' }), 60000)
  }

  search () {
    this.send({ type: 'find_match', interests: this.interests })
  }

  send (msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg))
  }

  receive (msg) {
    if (msg.type === 'queued') {
      this.on.state('queued', msg)
      this.search()
    } else if (msg.type === 'no_match_found') {
      this.on.state('waiting')
    } else if (msg.type === 'match_found') {
      if (this.done) return // the same match again from the inbox: one match
      this.done = true
      this.on.state('matched', msg)
      this.on.matched(msg)
      this.stop()
    } else if (msg.type === 'rate_limited') {
      this.on.state('rate_limited', msg.retry_after)
    } else if (msg.type === 'cancelled') {
      this.on.state('cancelled')
    } else if (msg.type === 'error') {
      this.on.state('error', msg.detail)
    }
  }

  cancel () {
    this.send({ type: 'cancel' })
    this.done = true
    this.stop()
    this.on.state('cancelled')
  }

  stop () {
    clearInterval(this.ping)
    if (this.ws) {
      const ws = this.ws
      this.ws = null
      ws.close(1000)
    }
  }
}
