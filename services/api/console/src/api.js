// The api over fetch: the bearer token, problem+json turned into sentences a person reads.

const TOKEN = 'redline.token'

export class ApiError extends Error {
  constructor (status, message, retryAfter = null) {
    super(message)
    this.status = status
    this.retryAfter = retryAfter
  }
}

export const session = {
  get token () { return localStorage.getItem(TOKEN) },
  set token (value) {
    if (value) localStorage.setItem(TOKEN, value)
    else localStorage.removeItem(TOKEN)
  }
}

// What each status means to the person in front of the console, when the server's own detail
// is not enough on its own.
function sentence (status, problem, what) {
  const detail = problem?.detail
  if (status === 401) return 'Your session ended. Log in again.'
  if (status === 404) return `${what} does not exist, or you do not have access to it.`
  if (status === 409) return detail || 'That name is taken.'
  if (status === 413) return 'That is too large to save.'
  if (status === 422) {
    const first = problem?.errors?.[0]
    if (first) {
      const field = (first.loc || []).filter((p) => p !== 'body').join('.')
      return field ? `${field}: ${first.msg}` : first.msg
    }
    return detail || 'That input is not valid.'
  }
  if (status === 429) return 'Too many attempts.'
  if (status === 503) return 'The service is briefly unavailable. Try again in a moment.'
  return detail || `The server answered ${status}.`
}

export async function api (method, path, body = undefined, what = 'That') {
  const headers = { Accept: 'application/json' }
  const token = session.token
  if (token) headers.Authorization = `Bearer ${token}`
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  let res
  try {
    res = await fetch(`/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body)
    })
  } catch {
    throw new ApiError(0, 'Cannot reach the server. Check your connection and try again.')
  }
  if (res.status === 204) return null
  const text = await res.text()
  let data = null
  try { data = text ? JSON.parse(text) : null } catch { data = null }
  if (!res.ok) {
    const retry = Number(res.headers.get('Retry-After')) || null
    throw new ApiError(res.status, sentence(res.status, data, what), retry)
  }
  return data
}
