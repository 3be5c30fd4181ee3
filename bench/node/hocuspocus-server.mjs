// Hocuspocus 4.7 in memory (no extensions: nothing persisted), for bench/collab.py.
// HOST and PORT from the environment; no auth hook, so any token is accepted.
import { Server } from '@hocuspocus/server'

const host = process.env.HOST || '127.0.0.1'
const port = Number(process.env.PORT || 1234)
const server = new Server({ port, address: host, quiet: true })
await server.listen()
console.log(`hocuspocus listening on ${host}:${port}`)
