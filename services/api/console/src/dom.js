// A few DOM helpers: the console is plain modules, no framework.

export function h (tag, attrs = {}, ...children) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v)
    else if (k === 'class') el.className = v
    else if (v === true) el.setAttribute(k, '')
    else el.setAttribute(k, String(v))
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue
    el.append(c instanceof Node ? c : document.createTextNode(String(c)))
  }
  return el
}

let fieldSeq = 0

// A labelled input: the label names it for screen readers and for `getByLabel`.
export function field (label, attrs = {}) {
  const id = `f${++fieldSeq}`
  const input = h('input', { id, ...attrs })
  return { input, el: h('div', { class: 'field' }, h('label', { for: id }, label), input) }
}

// Counts `seconds` down in `el` ("… in 12 s"), then calls `done`. Returns a cancel function.
export function countdown (el, seconds, text, done) {
  let left = Math.max(1, Math.ceil(seconds))
  el.textContent = text(left)
  const timer = setInterval(() => {
    left -= 1
    if (left <= 0) {
      clearInterval(timer)
      done()
    } else {
      el.textContent = text(left)
    }
  }, 1000)
  return () => clearInterval(timer)
}

export function when (iso) {
  if (!iso) return 'never'
  const d = new Date(iso)
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' })
}

// A stable colour per user for cursors and the people list.
export function colourOf (key) {
  let n = 0
  for (const ch of key) n = (n * 31 + ch.codePointAt(0)) >>> 0
  const hue = n % 360
  return { color: `hsl(${hue} 70% 38%)`, colorLight: `hsl(${hue} 70% 38% / 0.22)` }
}
