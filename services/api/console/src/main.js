// The Redline console: sign up / log in, the tenant's documents, members, the co-editing editor
// with a save status a person can trust, and finding a partner. Routes: `/` and `/d/<id>`.
import './style.css'
import { api, ApiError, session } from './api.js'
import { colourOf, countdown, field, h, when } from './dom.js'
import { collabEditor, httpEditor } from './editor.js'
import { Events } from './events.js'
import { Matching, slugs } from './match.js'

const main = document.getElementById('main')
const who = document.getElementById('who')
const notice = document.getElementById('notice')
const LANGUAGES = [['en', 'English'], ['de', 'Deutsch'], ['es', 'Español'], ['fr', 'Français'], ['it', 'Italiano'], ['nl', 'Nederlands'], ['pl', 'Polski'], ['pt', 'Português'], ['ja', '日本語'], ['zh', '中文']]

let config = null
let me = null
let cleanup = []

// Links marked data-nav stay in the page (history API); a modified click opens a tab as usual.
document.addEventListener('click', (e) => {
  const a = e.target.closest('a[data-nav]')
  if (!a || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return
  e.preventDefault()
  navigate(a.getAttribute('href'))
})
window.addEventListener('popstate', () => route())

function navigate (path) {
  history.pushState(null, '', path)
  route()
}

function say (text) {
  notice.textContent = text || ''
  notice.hidden = !text
}

function sessionEnded () {
  session.token = null
  me = null
  route('Your session ended. Log in again.')
}

// Every failure the same way: a 401 is a session that ended; anything else is said in `where`.
function failed (err, where) {
  if (err instanceof ApiError && err.status === 401) sessionEnded()
  else where.textContent = err.message
}

async function route (message = '') {
  for (const f of cleanup.splice(0)) f()
  say('')
  main.replaceChildren()
  delete window.redline
  if (config === null) {
    try {
      const res = await fetch('/console/config.json')
      config = await res.json()
    } catch {
      main.append(h('p', { class: 'error', role: 'alert' }, 'Cannot reach the server. Reload the page to try again.'))
      return
    }
  }
  if (!session.token) {
    who.replaceChildren()
    renderAuth(message)
    return
  }
  if (me === null) {
    try {
      me = await api('GET', '/auth/me')
      me.colour = colourOf(me.user_id)
    } catch (err) {
      if (err.status === 401) {
        session.token = null
        renderAuth(err.message)
      } else {
        main.append(h('p', { class: 'error', role: 'alert' }, err.message))
      }
      return
    }
  }
  renderWho()
  const doc = location.pathname.match(/^\/d\/([^/]+)\/?$/)
  if (doc) renderDocument(decodeURIComponent(doc[1]))
  else {
    if (location.pathname !== '/') history.replaceState(null, '', '/')
    renderHome()
  }
}

// Sign up / log in ----------------------------------------------------------------------------
function renderAuth (message) {
  const user = field('Username', { name: 'username', autocomplete: 'username', required: true, minlength: 3, maxlength: 40, pattern: '[A-Za-z0-9_.\\-]+', title: 'letters, digits, . _ -' })
  const pass = field('Password', { name: 'password', type: 'password', autocomplete: 'current-password', required: true, minlength: 8 })
  const out = h('p', { class: 'error', role: 'alert' }, message)
  const login = h('button', { type: 'submit', class: 'primary' }, 'Log in')
  const signup = h('button', { type: 'button' }, 'Sign up')
  const form = h('form', { class: 'card auth', onsubmit: (e) => { e.preventDefault(); go('login') } },
    h('h1', {}, 'Welcome to Redline'),
    h('p', { class: 'muted' }, 'Documents that save as you type, co-edited live. Sign up to get your own workspace, or log in.'),
    user.el, pass.el, h('div', { class: 'row' }, login, signup), out)
  signup.addEventListener('click', () => { if (form.reportValidity()) go('signup') })
  main.append(form)
  user.input.focus()

  async function go (kind) {
    login.disabled = signup.disabled = true
    out.textContent = kind === 'login' ? 'Logging in…' : 'Creating your account…'
    let again = true
    try {
      const res = await api('POST', `/auth/${kind}`, { username: user.input.value, password: pass.input.value }, 'That account')
      session.token = res.token
      me = null
      await route()
      return
    } catch (err) {
      if (err.status === 401 && kind === 'login') out.textContent = 'Wrong username or password.'
      else if (err.status === 409) out.textContent = 'That username is taken. Pick another, or log in.'
      else if (err.status === 429 && err.retryAfter) {
        again = false
        countdown(out, err.retryAfter, (s) => `Too many attempts. Try again in ${s} s.`, () => {
          out.textContent = ''
          login.disabled = signup.disabled = false
        })
      } else out.textContent = err.message
    } finally {
      if (again) login.disabled = signup.disabled = false
    }
  }
}

function renderWho () {
  const out = h('button', {
    type: 'button',
    onclick: async () => {
      try { await api('POST', '/auth/logout') } catch { /* the token is forgotten either way */ }
      session.token = null
      me = null
      navigate('/')
    }
  }, 'Log out')
  who.replaceChildren(h('span', {}, 'Signed in as ', h('strong', {}, me.username), me.role === 'owner' ? ' (owner)' : ''), out)
}

// Home: documents, members, find a partner, trending ------------------------------------------
function renderHome () {
  main.append(h('div', { class: 'home' },
    h('div', { class: 'column' }, documentsCard(), me.role === 'owner' ? membersCard() : null),
    h('div', { class: 'column' }, partnerCard(), trendingCard())))
}

// Room documents belong to their two partners, not to a workspace, so the documents list does
// not hold them: this browser remembers the rooms it was matched into.
const rooms = {
  key: () => `redline.rooms.${me.user_id}`,
  all () {
    try { return JSON.parse(localStorage.getItem(rooms.key()) || '[]') } catch { return [] }
  },
  add (frame) {
    const kept = rooms.all().filter((r) => r.id !== frame.document_id)
    kept.unshift({ id: frame.document_id, shared: frame.shared_interests, at: new Date().toISOString() })
    localStorage.setItem(rooms.key(), JSON.stringify(kept.slice(0, 20)))
  }
}

function documentsCard () {
  const title = field('Title', { name: 'title', required: true, maxlength: 200, placeholder: 'Meeting notes' })
  const out = h('p', { class: 'error', role: 'alert' })
  const list = h('ul', { class: 'docs', 'aria-label': 'Documents' }, h('li', { class: 'muted' }, 'Loading…'))
  const create = h('button', { type: 'submit', class: 'primary' }, 'New document')
  const form = h('form', {
    class: 'row end',
    onsubmit: async (e) => {
      e.preventDefault()
      create.disabled = true
      try {
        const doc = await api('POST', '/documents', { title: title.input.value }, 'The document')
        navigate(`/d/${doc.id}`)
      } catch (err) {
        if (err.status === 429 && err.retryAfter) {
          // Disabled until the wait is over, as the countdown says.
          const stop = countdown(out, err.retryAfter, (s) => `You created many documents just now. Try again in ${s} s.`, () => {
            out.textContent = ''
            create.disabled = false
          })
          cleanup.push(stop)
          return
        }
        failed(err, out)
        create.disabled = false
      }
    }
  }, title.el, create)
  load()
  const mine = rooms.all()
  const roomList = mine.length
    ? [h('h3', {}, 'Your rooms'), h('ul', { class: 'docs', 'aria-label': 'Your rooms' }, ...mine.map((r) => h('li', {},
        h('a', { href: `/d/${r.id}`, 'data-nav': true }, `Room: ${r.shared.join(', ')}`),
        h('span', { class: 'muted' }, ` · matched ${when(r.at)}`))))]
    : []
  return h('section', { class: 'card docs-card', 'aria-labelledby': 'docs-h' }, h('h2', { id: 'docs-h' }, 'Documents'), form, out, list, ...roomList)

  async function load () {
    try {
      const page = await api('GET', '/documents?limit=100')
      list.replaceChildren(...(page.items.length
        ? page.items.map((d) => h('li', {},
          h('a', { href: `/d/${d.id}`, 'data-nav': true }, d.title),
          // updated_at is the last edit's time: "saved" only once Postgres holds that edit.
          h('span', { class: 'muted' }, d.status === 'saved'
            ? ` · Last saved ${when(d.updated_at)} (version ${d.saved_version})`
            : ` · Saving… (last edit ${when(d.updated_at)})`)))
        : [h('li', { class: 'muted' }, 'No documents yet. Give one a title and press New document.')]))
    } catch (err) {
      list.replaceChildren()
      failed(err, out)
    }
  }
}

function membersCard () {
  const user = field('Member username', { name: 'member-username', required: true, minlength: 3, maxlength: 40, autocomplete: 'off' })
  const pass = field('Member password', { name: 'member-password', type: 'password', required: true, minlength: 8, autocomplete: 'new-password' })
  const out = h('p', { role: 'status' })
  const add = h('button', { type: 'submit' }, 'Add member')
  const form = h('form', {
    onsubmit: async (e) => {
      e.preventDefault()
      add.disabled = true
      try {
        await api('POST', '/tenant/members', { username: user.input.value, password: pass.input.value }, 'The member')
        out.textContent = `${user.input.value} can now log in and open your documents.`
        user.input.value = pass.input.value = ''
      } catch (err) {
        if (err.status === 409) out.textContent = 'That username is taken.'
        else failed(err, out)
      } finally {
        add.disabled = false
      }
    }
  }, user.el, pass.el, add)
  return h('section', { class: 'card', 'aria-labelledby': 'members-h' }, h('h2', { id: 'members-h' }, 'Members'),
    h('p', { class: 'muted' }, 'Members of your workspace open and edit all of its documents.'), form, out)
}

function partnerCard () {
  const interests = field('Interests', { name: 'interests', placeholder: 'chess, jazz, hiking', autocomplete: 'off' })
  const lid = 'language'
  const language = h('select', { id: lid, name: 'language' }, ...LANGUAGES.map(([code, name]) => h('option', { value: code }, name)))
  const status = h('p', { role: 'status', class: 'match-status' })
  const find = h('button', { type: 'submit', class: 'primary' }, 'Find a partner')
  const cancel = h('button', { type: 'button', hidden: true }, 'Cancel')
  let stopCountdown = null
  const matching = new Matching(config, session.token, {
    state (kind, detail) {
      const searching = ['connecting', 'queued', 'waiting'].includes(kind)
      cancel.hidden = !searching
      find.disabled = searching || kind === 'matched'
      if (kind === 'connecting') status.textContent = 'Joining the queue…'
      else if (kind === 'queued') status.textContent = `In the queue (${detail.language}). Looking for someone who shares ${matching.interests.join(', ')}…`
      else if (kind === 'waiting') status.textContent = `No match yet: nobody waiting shares ${matching.interests.join(', ')}. You stay in the queue and are matched as soon as someone does.`
      else if (kind === 'matched') status.textContent = `Matched on ${detail.shared_interests.join(', ')}! Opening your shared document…`
      else if (kind === 'cancelled') status.textContent = 'Search cancelled.'
      else if (kind === 'error') status.textContent = detail
      else if (kind === 'rate_limited') {
        find.disabled = true
        stopCountdown?.()
        stopCountdown = countdown(status, detail, (s) => `Too many searches. Try again in ${s} s.`, () => {
          status.textContent = 'You can search again.'
          find.disabled = false
        })
      }
    },
    matched (frame) {
      rooms.add(frame)
      navigate(`/d/${frame.document_id}`)
    }
  })
  cleanup.push(() => { stopCountdown?.(); matching.stop() })
  cancel.addEventListener('click', () => matching.cancel())
  const form = h('form', {
    onsubmit: async (e) => {
      e.preventDefault()
      const wanted = slugs(interests.input.value)
      if (!wanted.length) {
        status.textContent = 'Name at least one interest: a match means sharing one.'
        interests.input.focus()
        return
      }
      try {
        await matching.find(wanted, language.value)
      } catch (err) {
        find.disabled = false
        cancel.hidden = true
        if (err.status === 429 && err.retryAfter) countdown(status, err.retryAfter, (s) => `Too many profile changes. Try again in ${s} s.`, () => { status.textContent = '' })
        else failed(err, status)
      }
    }
  }, interests.el, h('div', { class: 'field' }, h('label', { for: lid }, 'Language'), language), h('div', { class: 'row' }, find, cancel), status)
  api('GET', '/users/me/profile').then((p) => {
    if (p.interests?.length && !interests.input.value) interests.input.value = p.interests.join(', ')
    if (p.language) language.value = p.language
  }).catch(() => { /* a new account may have no profile yet: the form starts empty */ })
  return h('section', { class: 'card', 'aria-labelledby': 'partner-h' }, h('h2', { id: 'partner-h' }, 'Find a partner'),
    h('p', { class: 'muted' }, 'Meet someone who shares an interest: you both land in a new document to write in together.'), form)
}

function trendingCard () {
  const list = h('ol', { class: 'trending', 'aria-label': 'Trending interests' }, h('li', { class: 'muted empty' }, 'Loading…'))
  api('GET', '/trending/interests?limit=10').then((items) => {
    list.replaceChildren(...(items.length
      ? items.map((t) => h('li', {}, t.slug, h('span', { class: 'muted' }, ` · ${t.score} ${t.score === 1 ? 'match' : 'matches'}`)))
      : [h('li', { class: 'muted empty' }, 'Nothing matched yet today.')]))
  }).catch((err) => failed(err, list))
  return h('aside', { class: 'card', 'aria-labelledby': 'trending-h' }, h('h2', { id: 'trending-h' }, 'Trending today'), list)
}

// A document ------------------------------------------------------------------------------------
async function renderDocument (id) {
  const back = h('a', { href: '/', 'data-nav': true, class: 'back' }, '← Documents')
  main.append(back)
  let doc
  try {
    doc = await api('GET', `/documents/${encodeURIComponent(id)}`, undefined, 'This document')
  } catch (err) {
    if (err.status === 401) return sessionEnded()
    main.append(h('h1', {}, 'Document not available'), h('p', { class: 'error', role: 'alert' }, err.status === 422 ? 'That is not a document address.' : err.message))
    return
  }
  const statusEl = h('p', { id: 'save-status', class: 'status', role: 'status' }, 'Connecting…')
  const people = h('ul', { class: 'people', 'aria-label': 'People in this document' })
  const trouble = h('p', { class: 'error', role: 'alert' })
  // Any tab of this browser knows the room's shared interests, not only the one matched into it.
  const shared = rooms.all().find((r) => r.id === doc.id)?.shared
  const host = h('div', { class: 'editor' })
  const peopleRow = h('div', { class: 'people-row' }, h('span', { class: 'muted' }, 'In this document: '), people)
  main.append(...[h('div', { class: 'doc-head' }, h('h1', {}, doc.title), statusEl),
    shared ? h('p', { class: 'matched' }, `You were matched on: ${shared.join(', ')}. Say hello!`) : null,
    config.collab_enabled ? null : h('p', { class: 'warning' }, 'Co-editing is off on this server (REDLINE_COLLAB_ENABLED is false): your edits autosave, but others’ edits appear only when you reopen the document.'),
    peopleRow, trouble, host].filter(Boolean))

  const st = { version: doc.version, saved: doc.saved_version, connected: false, everConnected: false, pending: false, confirming: false, closed: null }
  const render = () => {
    let text
    if (st.closed) text = st.closed
    else if (!st.connected) text = st.everConnected ? 'Offline — changes kept' : 'Connecting…'
    else if (st.pending || st.confirming || st.version > st.saved) text = 'Saving…'
    else text = `Saved (version ${st.saved})`
    if (statusEl.textContent !== text) statusEl.textContent = text
    statusEl.dataset.state = st.closed ? 'closed' : !st.connected ? 'offline' : text.startsWith('Saved') ? 'saved' : 'saving'
  }
  const versions = (v, saved) => {
    if (v != null) st.version = Math.max(st.version, v)
    if (saved != null) st.saved = Math.max(st.saved, saved)
    render()
  }
  // The last frame we sent was stored: its version is the newest now. Ask once (coalesced), so
  // "Saved" never shows a version older than our own edit.
  let asking = null
  let askAgain = false
  async function confirm (afterAck = false) {
    // Only an acknowledged edit holds `Saved` back until the answer; a refresh does not flicker.
    if (afterAck) {
      st.confirming = true
      render()
    }
    if (asking) { askAgain = true; return }
    asking = (async () => {
      do {
        askAgain = false
        try {
          const s = await api('GET', `/documents/${doc.id}/status`, undefined, 'This document')
          versions(s.version, s.saved_version)
        } catch (err) {
          if (err.status === 404) gone('This document was deleted, or you no longer have access to it.')
          else if (err.status === 401) return sessionEnded()
          else await new Promise((resolve) => setTimeout(resolve, 1000))
          askAgain = askAgain || err.status === 0 || err.status === 503
        }
      } while (askAgain)
    })()
    await asking
    asking = null
    st.confirming = false
    render()
  }
  // The first word of a document's end stays: the collab socket's close, the events socket's
  // document.deleted and a status read's 404 can all tell of one deletion, in any order.
  const gone = (why) => {
    if (st.closed) return
    st.closed = why
    render()
    editor?.destroy()
    editor = null
    peopleRow.hidden = true
    host.replaceChildren(h('p', { class: 'error', role: 'alert' }, why))
  }

  const events = new Events(config, session.token, {
    event (e) {
      if (e.document_id !== doc.id) return
      if (e.event === 'document.edited') versions(e.version, null)
      else if (e.event === 'document.saved') versions(null, e.version)
      else if (e.event === 'document.deleted') gone('This document was deleted.')
    },
    reset: () => confirm(),
    subscribed: () => confirm(),
    // A refused subscribe (say the document was deleted between the page's load and the
    // socket's open: its document.deleted came before we followed) is checked by a status read.
    error: (detail) => {
      trouble.textContent = `Live status: ${detail}`
      confirm()
    },
    sessionEnded
  })
  events.follow(doc.id)
  // While the events socket is down the status is polled, so it never rests on a dead socket.
  const poll = setInterval(() => { if (!events.open && st.connected) confirm() }, 3000)

  let wasPending = false
  const on = {
    sync ({ connected, everConnected, pending }) {
      st.connected = connected
      st.everConnected = everConnected
      st.pending = pending
      if (wasPending && !pending && connected) confirm(true)
      wasPending = pending
      render()
    },
    saved: (out) => versions(out.version, out.saved_version),
    people (list) {
      people.replaceChildren(...list.map((p) => h('li', {}, h('span', { class: 'swatch', style: `background:${p.color}`, 'aria-hidden': 'true' }), p.name, p.me ? ' (you)' : '')))
    },
    // The collab socket's own word on a session that ended or a deletion is enough: the events
    // socket (on the matcher) may be down and never say it.
    closed (reason) {
      if (/session ended|logged out/i.test(reason)) sessionEnded()
      else if (/deleted/i.test(reason)) gone('This document was deleted.')
      else gone(`${reason[0].toUpperCase()}${reason.slice(1)}.`)
    },
    trouble: (text) => { trouble.textContent = text }
  }
  let editor = config.collab_enabled
    ? collabEditor({ parent: host, docId: doc.id, token: session.token, me, on })
    : httpEditor({ parent: host, docId: doc.id, text: doc.content, on })
  if (!config.collab_enabled) on.people([{ name: me.username, color: me.colour.color, me: true }])
  // For tests and the curious: the editor's text as CodeMirror holds it.
  window.redline = { text: () => editor?.text() ?? null }
  cleanup.push(() => {
    clearInterval(poll)
    events.close()
    editor?.destroy()
  })
}

route()
